"""The node API as an ASGI app: routes, operator auth, errors, and the OpenAPI document; job logs
over HTTP (GET with the signed request in the query, POST with it as the body); and the same app
answering CLI clients over the transport (``/deedmesh/api/1``), operator routes excluded."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

import trio
import trio.testing

from mesh._api import API_PROTOCOL, API_TIMEOUT_S, MAX_API_REQUEST_BYTES, REMOTE_SUBMISSIONS_PER_S, NodeApi
from mesh._identity import NodeIdentity
from mesh._node import NodeConfig, open_node
from mesh._transport import MemoryNetwork

from ._asgi import call
from .test_jobs_gossip import ESCROW
from .test_logs import expected, install, placed_job, reader, signed
from .test_node_memory import capacity

TOKEN = "operator-secret"


async def test_routes_auth_and_errors() -> None:
    ident = NodeIdentity(b"\x31" * 32)
    network = MemoryNetwork()
    async with open_node(NodeConfig(), ident, network.endpoint(ident.address), capacity(),
                         lambda _: True) as node:
        app = NodeApi(node, peer_id="16Uiu2HAtest", addrs=lambda: ["/ip4/127.0.0.1/tcp/1"], operator_token=TOKEN)
        assert await call(app, "GET", "/health") == (200, {"status": "ok", "address": ident.address,
                                                           "peers_alive": 0})
        status, identity = await call(app, "GET", "/identity")
        assert identity["peer_id"] == "16Uiu2HAtest"
        assert TOKEN not in json.dumps(identity)
        assert (await call(app, "GET", "/peers")) == (200, [])
        status, text = await call(app, "GET", "/metrics")
        assert status == 200
        assert 'deedmesh_peers{state="alive"} 0' in text
        assert (await call(app, "GET", "/nope"))[0] == 404
        assert (await call(app, "DELETE", "/health"))[0] == 405
        body = capacity(version=9).model_dump_json().encode()
        assert (await call(app, "POST", "/admin/capacity", body))[0] == 401
        assert (await call(app, "POST", "/admin/capacity", body, token="wrong"))[0] == 401
        assert (await call(app, "POST", "/admin/capacity", b"{}", token=TOKEN))[0] == 422
        assert (await call(app, "POST", "/admin/capacity", b"x" * 70_000, token=TOKEN))[0] == 413
        assert await call(app, "POST", "/admin/capacity", body, token=TOKEN) == (200, {"advertised": 9})
        status, spec = await call(app, "GET", "/openapi.json")
        assert set(spec["paths"]) == {"/health", "/identity", "/peers", "/counters", "/metrics", "/admin/capacity",
                                      "/jobs", "/jobs/{job_id}/logs"}
        assert (await call(app, "POST", "/jobs", b"{}")) == (503, {"error": "no-escrow", "message":
                                                                   "this node runs without an escrow: no jobs"})
        assert spec["paths"]["/admin/capacity"]["post"]["security"] == [{"bearer": []}]
        assert set(spec["paths"]["/jobs/{job_id}/logs"]["post"]["responses"]) >= {"401", "403", "404", "410", "502",
                                                                                   "503", "504"}
        assert (await call(app, "POST", "/jobs/7/logs", b"{}")) == (503, {"error": "no-escrow", "message":
                                                                         "this node runs without an escrow: no jobs"})
        assert (await call(app, "DELETE", "/jobs/7/logs"))[0] == 405
        assert (await call(app, "GET", "/jobs/0/logs"))[0] == 404
        identity = (await call(app, "GET", "/identity"))[1]
        assert identity["escrow"] is None
        await trio.lowlevel.checkpoint()


async def test_job_logs_over_http_get_and_post(autojump_clock: trio.testing.MockClock) -> None:
    async with placed_job(MemoryNetwork()) as (_nodes, where, bystander):
        app = NodeApi(bystander, peer_id="16Uiu2HAtest", addrs=lambda: [], operator_token=TOKEN,
                      logs=install(bystander, reader(bystander.address)))
        request = signed(replica=1)
        status, answer = await call(app, "POST", "/jobs/7/logs", json.dumps(request).encode())
        assert (status, answer["replicas"][0]["logs"]) == (200, expected(where[1], 1))
        query = urlencode({k: v for k, v in request.items() if k != "job_id"})
        status, answer = await call(app, "GET", f"/jobs/7/logs?{query}")
        assert (status, answer["replicas"][0]["logs"]) == (200, expected(where[1], 1))
        every = urlencode({k: v for k, v in signed().items() if k not in ("job_id", "replica")})
        status, answer = await call(app, "GET", f"/jobs/7/logs?{every}")
        assert (status, [r["replica"] for r in answer["replicas"]]) == (200, [0, 1])
        status, answer = await call(app, "GET", f"/jobs/7/logs?{query.replace('tail=3', 'tail=4')}")
        assert (status, answer["error"]) == (403, "wrong-owner")  # the signature covers the query
        assert (await call(app, "POST", "/jobs/7/logs", b"[1]"))[1]["error"] == "malformed"
        assert (await call(app, "POST", "/jobs/7/logs", b"not json"))[0] == 422
        assert (await call(app, "POST", "/jobs/7/logs", b"x" * 70_000))[0] == 413
        assert (await call(app, "GET", "/identity"))[1]["escrow"] == {"chain_id": ESCROW[0], "address": ESCROW[1]}


async def test_the_api_answers_clients_over_the_transport(autojump_clock: trio.testing.MockClock) -> None:
    network = MemoryNetwork()
    async with placed_job(network) as (_nodes, where, bystander):
        app = NodeApi(bystander, peer_id="16Uiu2HAtest", addrs=lambda: [], operator_token=TOKEN,
                      logs=install(bystander, reader(bystander.address)))
        bystander.transport.set_handler(API_PROTOCOL, app.answer, max_request_bytes=MAX_API_REQUEST_BYTES,
                                        timeout_s=API_TIMEOUT_S)
        client = network.endpoint("cli-client")

        async def ask(request: Any) -> tuple[int, Any]:
            data = request if isinstance(request, bytes) else json.dumps(request).encode()
            raw = await client.request(bystander.address, API_PROTOCOL, data, timeout_s=30, max_response_bytes=1 << 22)
            answer = json.loads(raw)
            return answer["status"], answer["body"]

        # the same routes and answers as HTTP
        for method, path in (("GET", "/health"), ("GET", "/jobs"), ("GET", "/identity"), ("GET", "/nope")):
            assert await ask({"method": method, "path": path, "body": None}) == await call(app, method, path)
        status, text = await ask({"method": "GET", "path": "/metrics"})
        assert status == 200
        assert "deedmesh_connections" in text
        counted = {line.split(" ")[0]: int(line.split(" ")[1]) for line in text.splitlines()
                   if line.startswith("deedmesh_sync_")}
        # the bystander took part in placing a job: frames went both ways, each with some bytes
        assert 0 < counted['deedmesh_sync_frames_total{dir="received"}'] <= bystander.frames["received"][0]
        assert counted['deedmesh_sync_frames_total{dir="sent"}'] > 0
        received = counted['deedmesh_sync_frames_total{dir="received"}']
        assert counted['deedmesh_sync_bytes_total{dir="received"}'] > received
        gc_lines = [line.split(" ") for line in text.splitlines() if line.startswith("deedmesh_gc_")]
        assert {name for name, _ in gc_lines} == {f'deedmesh_gc_{what}_total{{generation="{g}"}}'
                                                 for what in ("seconds", "collections") for g in range(3)}
        assert all(float(value) >= 0 for _, value in gc_lines)
        status, answer = await ask({"method": "POST", "path": "/jobs/7/logs", "body": signed(replica=0)})
        assert (status, answer["replicas"][0]["logs"]) == (200, expected(where[0], 0))
        query = urlencode({k: v for k, v in signed(replica=0).items() if k != "job_id"})
        status, answer = await ask({"method": "GET", "path": f"/jobs/7/logs?{query}"})
        assert (status, answer["replicas"][0]["node"]) == (200, where[0])
        # operator routes are HTTP only (and no token could be sent)
        body = capacity(version=9).model_dump(mode="json")
        assert (await ask({"method": "POST", "path": "/admin/capacity", "body": body}))[0] == 403
        assert bystander.advertised_capacity().version == 1
        assert (await ask({"method": "POST", "path": "/jobs", "body": {"x": "y" * MAX_API_REQUEST_BYTES}}))[0] == 413
        # submissions over libp2p share one budget: a burst of twice the rate, then 429
        statuses = [(await ask({"method": "POST", "path": "/jobs", "body": {}}))[0]
                    for _ in range(int(2 * REMOTE_SUBMISSIONS_PER_S) + 5)]
        assert 429 not in statuses[:int(2 * REMOTE_SUBMISSIONS_PER_S)]
        assert statuses[-1] == 429
        status, answer = await ask({"method": "POST", "path": "/jobs", "body": {}})
        assert (status, answer["error"]) == (429, "rate-limited")
        await trio.sleep(1.0)  # the budget refills: REMOTE_SUBMISSIONS_PER_S more
        assert (await ask({"method": "POST", "path": "/jobs", "body": {}}))[0] != 429
        assert (await ask({"method": "GET", "path": "/health"}))[0] == 200  # reads are not limited
        assert (await ask(b"{nope"))[0] == 400
        assert (await ask({"method": "GET"}))[0] == 400
        assert (await ask({"method": "GET", "path": "health"}))[0] == 400
