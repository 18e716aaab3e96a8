"""The node's HTTP API: a small ASGI app served by hypercorn under trio, on 127.0.0.1 by default.

Read-only endpoints show the node's identity, its view of the mesh and its counters; nothing
secret is ever served (a job's logs go to its CSP alone, on a signed request: ``_logs``). Operator
endpoints (``/admin/...``) need ``Authorization: Bearer <token>``. ``/openapi.json`` documents
every route.

The same app answers CLI clients over libp2p (``/deedmesh/api/1``: one JSON request
``{"method", "path", "body"}``, one answer ``{"status", "body"}``): ``answer`` replays the request
through the ASGI app, so both paths share every route and check. Over libp2p the operator routes
are not served (nor is there a way to send a token), the body is capped as over HTTP, and job
submissions share one budget of ``REMOTE_SUBMISSIONS_PER_S`` (429 above it): each costs a chain
read, and a libp2p listen address may be public where the HTTP API is local.
"""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

import trio

from ._gc import GC_CLOCK
from ._job_desk import JobDesk
from ._job_events import JobEvents
from ._logs import LogDesk
from ._node import Node
from ._submission import LogRequest, Submission
from ._sync import TokenBucket
from ._transport import Message
from ._wire_capacity import Capacity

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
MAX_BODY_BYTES = 64 * 1024
API_PROTOCOL = "/deedmesh/api/1"
MAX_API_REQUEST_BYTES = MAX_BODY_BYTES + 4096  # the body, plus the method and path around it
MAX_API_ANSWER_BYTES = 4 << 20  # the largest answer: a job's logs (256 KiB, JSON-escaped) or a big /jobs
API_TIMEOUT_S = 20.0  # above a logs request's 10 s wait on a replica's holder
REMOTE_SUBMISSIONS_PER_S = 50.0  # POST /jobs over libp2p, all clients together (bursts of twice that)
REMOTE = "libp2p"  # the one key of that budget
LOGS_PATH = re.compile(r"/jobs/([1-9][0-9]{0,77})/logs")
_LOG_RESPONSES = {"200": {"description": "each replica's log, or why it is missing (some were read)"},
                  "401": {"description": "bad signature"},
                  "403": {"description": "not the job's CSP"},
                  "404": {"description": "no such job, or the job is stopped or the replica not placed"},
                  "409": {"description": "two CSPs name the job in this node's view"},
                  "410": {"description": "expired"}, "413": {"description": "too large"},
                  "422": {"description": "malformed, or valid for too long"},
                  "502": {"description": "a replica's holder is unreachable, or its container engine failed"},
                  "503": {"description": "this node (holding the replica) has no container runner, or no escrow"},
                  "504": {"description": "a replica's holder did not answer in time"}}
_LOG_PARAMETERS = [{"name": "job_id", "in": "path", "required": True, "schema": {"type": "integer"}}]

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "deedmesh node API", "version": "1"},
    "paths": {
        "/health": {"get": {"summary": "Liveness of this node and how many peers it sees alive",
                            "responses": {"200": {"description": "ok"}}}},
        "/identity": {"get": {"summary": "Node address, libp2p peer id and listen addresses",
                              "responses": {"200": {"description": "ok"}}}},
        "/peers": {"get": {"summary": "Every known peer: state (alive/suspect/dead), last seen, capacity",
                           "responses": {"200": {"description": "ok"}}}},
        "/counters": {"get": {"summary": "Gossip verdicts by topic, verdict and reason ([REJECT]/[IGNORE])",
                              "responses": {"200": {"description": "ok"}}}},
        "/metrics": {"get": {"summary": "Prometheus text exposition", "responses": {"200": {"description": "ok"}}}},
        "/jobs": {
            "get": {"summary": "Every job this node knows of: the newest action of its CSP, the claims on it "
                           "(each replica's holder, state and restarts; a WAR replica's version and failed "
                           "version; a ChainDist run's result digest) and its recent events as this node saw them",
                    "responses": {"200": {"description": "ok"}}},
            "post": {"summary": "Submit a CSP-signed job (or stop) to the mesh; checked against the escrow",
                     "requestBody": {"content": {"application/json": {"schema": {
                         "type": "object", "required": ["submission", "spec"],
                         "properties": {"submission": {"$ref": "#/components/schemas/Submission"},
                                        "spec": {"type": ["object", "null"]}}}}}},
                     "responses": {"202": {"description": "accepted and relayed"},
                                   "401": {"description": "bad signature"}, "402": {"description": "not funded"},
                                   "403": {"description": "not the job's CSP, or the CSP is not admitted"},
                                   "404": {"description": "no such job"},
                                   "409": {"description": "replayed nonce, spec or replicas not as funded"},
                                   "410": {"description": "expired"}, "413": {"description": "too large"},
                                   "422": {"description": "malformed"},
                                   "429": {"description": "too many submissions over libp2p (all clients share "
                                                          "one budget)"},
                                   "503": {"description": "this node has no escrow, the chain is unreachable, "
                                                          "or its nonce book cannot be written"}}}},
        "/jobs/{job_id}/logs": {
            "get": {"summary": "The job's logs, for its CSP only: the signed LogRequest's fields as query "
                               "parameters (replica omitted: every replica)",
                    "parameters": _LOG_PARAMETERS + [
                        {"name": name, "in": "query", "required": name != "replica", "schema": schema}
                        for name, schema in (("replica", {"type": "integer"}), ("tail", {"type": "integer"}),
                                             ("expiry", {"type": "integer"}), ("signature", {"type": "string"}))],
                    "responses": _LOG_RESPONSES},
            "post": {"summary": "The job's logs, for its CSP only: the signed LogRequest as the body; replicas "
                                "held elsewhere are read from their holders",
                     "parameters": _LOG_PARAMETERS,
                     "requestBody": {"content": {"application/json": {"schema": {
                         "$ref": "#/components/schemas/LogRequest"}}}},
                     "responses": _LOG_RESPONSES}},
        "/admin/capacity": {"post": {
            "summary": "Advertise new capacity (operator only)",
            "security": [{"bearer": []}],
            "requestBody": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Capacity"}}}},
            "responses": {"200": {"description": "advertised"}, "401": {"description": "no or wrong token"},
                          "422": {"description": "invalid capacity"}}}},
    },
    "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
                   "schemas": {"Capacity": Capacity.model_json_schema(),
                               "Submission": Submission.model_json_schema(),
                               "LogRequest": LogRequest.model_json_schema()}},
}


class NodeApi:
    """ASGI application over a running ``Node``."""

    def __init__(self, node: Node, *, peer_id: str, addrs: Callable[[], list[str]], operator_token: str,
                 desk: JobDesk | None = None, logs: LogDesk | None = None, events: JobEvents | None = None,
                 remote_submissions_per_s: float = REMOTE_SUBMISSIONS_PER_S,
                 runner_metrics: Callable[[], list[str]] | None = None,
                 endpoints: Callable[[int, int], dict[int, int]] | None = None) -> None:
        self.node = node
        # (job, replica) -> container port -> the port this node holds for it (its own replicas)
        self.endpoints = endpoints
        self.runner_metrics = runner_metrics  # the runners' lines for /metrics (a node with an engine)
        self.events = events
        self.desk = desk
        self.logs = logs
        self.peer_id = peer_id
        self.addrs = addrs
        self._token = operator_token.encode()
        self._remote_submissions = TokenBucket(remote_submissions_per_s, 2 * remote_submissions_per_s)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        method, path = scope["method"], scope["path"]
        routes: dict[tuple[str, str], Callable[[], Any]] = {
            ("GET", "/health"): self._health, ("GET", "/identity"): self._identity, ("GET", "/peers"): self._peers,
            ("GET", "/counters"): self._counters, ("GET", "/openapi.json"): lambda: OPENAPI,
            ("GET", "/jobs"): self._jobs,
        }
        if (method, path) in routes:
            await _json(send, 200, routes[(method, path)]())
        elif (method, path) == ("GET", "/metrics"):
            await _respond(send, 200, self._metrics().encode(), "text/plain; version=0.0.4")
        elif (method, path) == ("POST", "/admin/capacity"):
            await self._admin_capacity(scope, receive, send)
        elif (method, path) == ("POST", "/jobs"):
            await self._submit(receive, send)
        elif (logs_of := LOGS_PATH.fullmatch(path)) and method in ("GET", "POST"):
            await self._logs(int(logs_of.group(1)), method, scope, receive, send)
        elif path in {p for _, p in routes} | {"/metrics", "/admin/capacity"} or logs_of:
            await _json(send, 405, {"error": "method not allowed"})
        else:
            await _json(send, 404, {"error": f"no route {path}"})

    # ---------------------------------------------------------------- handlers

    def _health(self) -> dict[str, Any]:
        return {"status": "ok", "address": self.node.address, "peers_alive": len(self.node.membership.alive())}

    def _identity(self) -> dict[str, Any]:
        escrow = None if self.node.escrow is None else {"chain_id": self.node.escrow[0], "address": self.node.escrow[1]}
        return {"address": self.node.address, "peer_id": self.peer_id, "addrs": self.addrs(), "escrow": escrow}

    def _peers(self) -> list[dict[str, Any]]:
        now = self.node.now_ms()
        return [{"address": p.address, "state": p.state.value, "connected": p.connected,
                 "last_seen_ms_ago": None if p.last_beat_ms is None else now - p.last_beat_ms,
                 "capacity_received_ms": p.capacity_received_ms, "state_since_ms": p.since_ms,
                 "beat_lag_ms": p.beat_lag_ms,
                 "capacity": None if p.capacity is None else p.capacity.model_dump(mode="json")}
                for p in self.node.view()]

    def _counters(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for (topic, verdict, reason), n in sorted(self.node.gossip.counters.items()):
            out.setdefault(topic, {}).setdefault(verdict, {})[reason] = n
        return out

    def _jobs(self) -> list[dict[str, Any]]:
        claims: dict[int, list[dict[str, Any]]] = {}
        for node, held in self.node.claims.items():
            versions, results, revisions = held.versions_of, held.results_of, held.revisions_of
            for c in held.claims:
                serving, failed = versions.get((c.job_id, c.replica), ("", ""))
                revision, failed_revision = revisions.get((c.job_id, c.replica), ("", ""))
                claims.setdefault(c.job_id, []).append({"replica": c.replica, "node": node,
                                                        "generation": c.generation,
                                                        "lease_until_ms": c.lease_until_ms,
                                                        "state": c.state, "restarts": c.restarts,
                                                        # a WAR replica's commit, and one that failed to roll out
                                                        "version": serving or None,
                                                        "failed_version": failed or None,
                                                        # a ChainDist run's result digest, once it completed
                                                        "result_digest": results.get((c.job_id, c.replica)),
                                                        # during and after a rolling update: the spec
                                                        # revision it runs, and one it failed to reach
                                                        "revision": revision or None,
                                                        "failed_revision": failed_revision or None,
                                                        # where this node serves its own replicas
                                                        # (container port -> node port); others: {}
                                                        "ports": self._ports(node, c.job_id, c.replica)})
        return [{"job_id": job_id, "csp": csp, "nonce": known.nonce, "stopped": known.spec is None,
                 "name": None if known.spec is None else known.spec.name,
                 "kind": None if known.spec is None else known.spec.kind,
                 "replicas": None if known.spec is None else known.spec.replicas,
                 # the newest spec's revision, and the one before while it may still run (_rollout)
                 "revision": known.revision, "previous_revision": known.previous_revision,
                 "spec": known.record.spec,
                 "received_ms": known.received_ms,
                 "claims": sorted(claims.get(job_id, []), key=lambda c: (c["replica"], c["node"])),
                 "events": [] if self.events is None else [e.as_json() for e in self.events.of(job_id)]}
                for (job_id, csp), known in sorted(self.node.jobs.items())]

    def _ports(self, holder: str, job_id: int, replica: int) -> dict[str, int]:
        if holder != self.node.address or self.endpoints is None:
            return {}
        return {str(c): p for c, p in self.endpoints(job_id, replica).items()}

    async def _submit(self, receive: Receive, send: Send) -> None:
        body = await _body(receive)
        if body is None:
            await _json(send, 413, {"error": "too-large", "message": f"body above {MAX_BODY_BYTES} bytes"})
        elif self.desk is None:
            await _json(send, 503, {"error": "no-escrow", "message": "this node runs without an escrow: no jobs"})
        else:
            await _json(send, *await self.desk.submit(body))

    async def _logs(self, job_id: int, method: str, scope: Scope, receive: Receive, send: Send) -> None:
        body = await _body(receive)
        if body is None:
            await _json(send, 413, {"error": "too-large", "message": f"body above {MAX_BODY_BYTES} bytes"})
            return
        if self.logs is None:
            await _json(send, 503, {"error": "no-escrow", "message": "this node runs without an escrow: no jobs"})
            return
        if method == "POST":
            try:
                request = json.loads(body)
            except ValueError:
                request = None
        else:  # the query string: numbers as numbers
            query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
            request = {k: int(v) if v.isdigit() and k != "signature" else v for k, v in query.items()}
            request["job_id"] = job_id
        if not isinstance(request, dict):
            await _json(send, 422, {"error": "malformed", "message": "the body must be a JSON object (a LogRequest)"})
            return
        await _json(send, *await self.logs.read(job_id, request))

    async def answer(self, msg: Message) -> bytes:
        """Answer one ``/deedmesh/api/1`` request (module docstring) through this app."""
        status, body = await self._answer(msg)
        return json.dumps({"status": status, "body": body}).encode()

    async def _answer(self, msg: Message) -> tuple[int, Any]:
        if msg.oversized:
            return 413, {"error": "too-large", "message": f"a request of {msg.oversized} bytes"}
        try:
            request = json.loads(msg.data)
            method, target, body = request["method"], request["path"], request.get("body")
            if not (isinstance(method, str) and isinstance(target, str) and target.startswith("/")):
                raise TypeError("method and path must be strings, the path absolute")
        except (ValueError, KeyError, TypeError) as exc:
            return 400, {"error": "malformed", "message": f'expected {{"method", "path", "body"}}: {exc}'}
        path, _, query = target.partition("?")
        if path.split("/")[1] == "admin":
            return 403, {"error": "operator-only", "message": "operator routes are served over HTTP only"}
        if (method.upper(), path) == ("POST", "/jobs"):
            # each submission costs a chain read, and the libp2p listen address may be public (the
            # HTTP API is local by default): all remote submissions share one budget
            now = trio.current_time()
            if (wait := self._remote_submissions.wait_s(REMOTE, now)) > 0:
                return 429, {"error": "rate-limited", "message": f"too many submissions over libp2p; retry in "
                                                                  f"{wait:.2f} s"}
            self._remote_submissions.spend(REMOTE, now)
        scope = {"type": "http", "method": method.upper(), "path": path, "query_string": query.encode(),
                 "headers": []}
        chunks = [{"type": "http.request", "body": b"" if body is None else json.dumps(body).encode(),
                   "more_body": False}]
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return chunks.pop(0) if chunks else {"type": "http.disconnect"}

        async def send(event: dict[str, Any]) -> None:
            sent.append(event)

        await self(scope, receive, send)
        raw = b"".join(e.get("body", b"") for e in sent[1:])
        is_json = dict(sent[0]["headers"]).get(b"content-type") == b"application/json"
        return sent[0]["status"], json.loads(raw) if is_json else raw.decode()

    def _metrics(self) -> str:
        lines = ["# HELP deedmesh_gossip_messages_total Gossip messages by topic, verdict and reason.",
                 "# TYPE deedmesh_gossip_messages_total counter"]
        for (topic, verdict, reason), n in sorted(self.node.gossip.counters.items()):
            lines.append(f'deedmesh_gossip_messages_total{{topic="{topic}",verdict="{verdict}",reason="{reason}"}} {n}')
        lines += ["# HELP deedmesh_connections Peers this node holds a connection to.",
                  "# TYPE deedmesh_connections gauge", f"deedmesh_connections {len(self.node.transport.peers())}"]
        lines += ["# HELP deedmesh_peers Known peers by liveness state.", "# TYPE deedmesh_peers gauge"]
        states = [p.state.value for p in self.node.view()]
        for state in ("alive", "suspect", "dead"):
            lines.append(f'deedmesh_peers{{state="{state}"}} {states.count(state)}')
        lines += ["# HELP deedmesh_loop_lag_seconds The most this node's event loop ran late in the last 10 s.",
                  "# TYPE deedmesh_loop_lag_seconds gauge", f"deedmesh_loop_lag_seconds {self.node.loop_lag_s:.3f}"]
        lines += ["# HELP deedmesh_sync_frames_total Neighbour sync frames, by direction.",
                  "# TYPE deedmesh_sync_frames_total counter"]
        lines += [f'deedmesh_sync_frames_total{{dir="{d}"}} {n}' for d, (n, _) in self.node.frames.items()]
        lines += ["# HELP deedmesh_sync_bytes_total Bytes of neighbour sync frames, by direction.",
                  "# TYPE deedmesh_sync_bytes_total counter"]
        lines += [f'deedmesh_sync_bytes_total{{dir="{d}"}} {b}' for d, (_, b) in self.node.frames.items()]
        lines += ["# HELP deedmesh_gc_seconds_total Time this process spent collecting garbage, by generation.",
                  "# TYPE deedmesh_gc_seconds_total counter"]
        lines += [f'deedmesh_gc_seconds_total{{generation="{g}"}} {s:.4f}' for g, s in enumerate(GC_CLOCK.seconds)]
        lines += ["# HELP deedmesh_gc_collections_total Garbage collections this process ran, by generation.",
                  "# TYPE deedmesh_gc_collections_total counter"]
        lines += [f'deedmesh_gc_collections_total{{generation="{g}"}} {n}' for g, n in enumerate(GC_CLOCK.collections)]
        frames, records = self.node.backlog
        lines += ["# HELP deedmesh_backlog Frames received and not yet read; job and claim records waiting for "
                  "their check.", "# TYPE deedmesh_backlog gauge",
                  f'deedmesh_backlog{{of="frames"}} {frames}', f'deedmesh_backlog{{of="records"}} {records}']
        jobs, doubled = self._placement()
        lines += ["# HELP deedmesh_jobs Jobs this node knows, by placement: every replica claimed once "
                  "(placed), some (partial), none (unplaced), or stopped.", "# TYPE deedmesh_jobs gauge"]
        for state in ("placed", "partial", "unplaced", "stopped"):
            lines.append(f'deedmesh_jobs{{state="{state}"}} {jobs[state]}')
        lines += ["# HELP deedmesh_replicas_claimed_twice Replicas that more than one node claims right now.",
                  "# TYPE deedmesh_replicas_claimed_twice gauge", f"deedmesh_replicas_claimed_twice {doubled}"]
        if self.runner_metrics is not None:
            lines += self.runner_metrics()
        return "\n".join(lines) + "\n"

    def _placement(self) -> tuple[dict[str, int], int]:
        """How many known jobs are placed, partly placed, unplaced or stopped in this node's view, and
        how many replicas more than one node claims."""
        holders: dict[tuple[int, int], int] = {}
        for held in self.node.claims.values():
            for c in held.claims:
                holders[(c.job_id, c.replica)] = holders.get((c.job_id, c.replica), 0) + 1
        jobs = dict.fromkeys(("placed", "partial", "unplaced", "stopped"), 0)
        for (job_id, _), known in self.node.jobs.items():
            if known.spec is None:
                jobs["stopped"] += 1
                continue
            once = sum(holders.get((job_id, r)) == 1 for r in range(known.spec.replicas))
            jobs["placed" if once == known.spec.replicas else "partial" if once else "unplaced"] += 1
        return jobs, sum(n > 1 for n in holders.values())

    async def _admin_capacity(self, scope: Scope, receive: Receive, send: Send) -> None:
        auth = dict(scope["headers"]).get(b"authorization", b"")
        if not hmac.compare_digest(auth, b"Bearer " + self._token):
            await _json(send, 401, {"error": "operator token required"})
            return
        body = await _body(receive)
        if body is None:
            await _json(send, 413, {"error": "body too large"})
            return
        try:
            capacity = Capacity.model_validate_json(body)
        except ValueError as exc:
            await _json(send, 422, {"error": "invalid capacity", "detail": str(exc)[:500]})
            return
        self.node.set_capacity(capacity)
        await _json(send, 200, {"advertised": capacity.version})


async def _body(receive: Receive) -> bytes | None:
    """The request body, or None if it exceeds ``MAX_BODY_BYTES`` (reading stops there)."""
    body = b""
    while True:
        event = await receive()
        body += event.get("body", b"")
        if len(body) > MAX_BODY_BYTES:
            return None
        if not event.get("more_body"):
            return body


async def _respond(send: Send, status: int, body: bytes, content_type: str) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def _json(send: Send, status: int, value: Any) -> None:
    await _respond(send, status, json.dumps(value).encode(), "application/json")
