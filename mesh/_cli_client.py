"""How the CLI reaches a node: ``--via`` is its HTTP API URL, or its libp2p multiaddr
(``/ip4/.../tcp/.../p2p/<peer id>``), which needs no open API port on the node and is encrypted and
authenticated (Noise checks the node holds that peer id's key). Over libp2p the CLI is a
short-lived client with a throwaway key speaking ``/deedmesh/api/1``, which the node answers
through the same routes as HTTP (``_api``)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from functools import partial
from typing import Any

import click
import trio

from ._errors import MeshError, TransportError

REQUEST_TIMEOUT_S = 30.0  # above the node's own deadlines (a logs request waits 10 s on a replica's holder)

via_option = click.option("--via", required=True,
                          help="Any node: its API URL (http://127.0.0.1:8700) or its libp2p multiaddr "
                               "(/ip4/127.0.0.1/tcp/4001/p2p/16Uiu2...).")


def call_node(via: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """One request to the node at ``via`` (module docstring): the status and the JSON answer.
    ``MeshError`` if the node cannot be reached or does not answer JSON."""
    if via.startswith("/"):
        return _call_libp2p(via, method, path, body)
    url = via.rstrip("/") + path
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    try:
        try:
            with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                return exc.code, json.loads(raw)
            except ValueError:
                return exc.code, {"error": "http", "message": f"{exc.reason}: {raw[:200]!r}"}
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise MeshError(f"node API {url} is unreachable: {exc}") from exc


def _call_libp2p(via: str, method: str, path: str, body: Any) -> tuple[int, Any]:
    # imported here: loading libp2p takes about a second, which only a multiaddr --via should pay
    from ._api import API_PROTOCOL, MAX_API_ANSWER_BYTES
    from ._transport_libp2p import request_once

    payload = json.dumps({"method": method, "path": path, "body": body}).encode()
    try:
        raw = trio.run(partial(request_once, via, API_PROTOCOL, payload, timeout_s=REQUEST_TIMEOUT_S,
                               max_response_bytes=MAX_API_ANSWER_BYTES))
    except TransportError as exc:
        raise MeshError(f"node {via} is unreachable over libp2p: {exc.reason}") from exc
    try:
        answer = json.loads(raw)
        return int(answer["status"]), answer["body"]
    except (ValueError, KeyError, TypeError) as exc:
        raise MeshError(f"node {via} answered nonsense over libp2p: {exc}") from exc


def get_json(via: str, path: str) -> Any:
    """GET ``path`` from the node at ``via``; ``MeshError`` unless it answers 200."""
    status, answer = call_node(via, "GET", path)
    if status != 200:
        raise MeshError(f"node {via} answered {status} to GET {path}: {answer}")
    return answer
