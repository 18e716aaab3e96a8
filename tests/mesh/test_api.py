"""The node API as an ASGI app: routes, operator auth, errors, and the OpenAPI document."""

from __future__ import annotations

import json
from typing import Any

import trio
import trio.testing

from mesh._api import NodeApi
from mesh._identity import NodeIdentity
from mesh._node import NodeConfig, open_node
from mesh._transport import MemoryNetwork

from .test_node_memory import capacity

TOKEN = "operator-secret"


async def call(app: NodeApi, method: str, path: str, body: bytes = b"", token: str | None = None,
               ) -> tuple[int, Any]:
    headers = [(b"authorization", f"Bearer {token}".encode())] if token else []
    scope = {"type": "http", "method": method, "path": path, "headers": headers}
    sent: list[dict[str, Any]] = []
    chunks = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        return chunks.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    status = sent[0]["status"]
    raw = sent[1]["body"]
    content_type = dict(sent[0]["headers"])[b"content-type"]
    return status, json.loads(raw) if content_type == b"application/json" else raw.decode()


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
                                      "/jobs"}
        assert (await call(app, "POST", "/jobs", b"{}")) == (503, {"error": "no-escrow", "message":
                                                                   "this node runs without an escrow: no jobs"})
        assert spec["paths"]["/admin/capacity"]["post"]["security"] == [{"bearer": []}]
        await trio.lowlevel.checkpoint()
