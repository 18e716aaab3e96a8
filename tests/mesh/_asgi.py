"""Calling a node's ASGI app in-process, as an HTTP server would."""

from __future__ import annotations

import json
from typing import Any

from mesh._api import NodeApi


async def call(app: NodeApi, method: str, path: str, body: bytes = b"", token: str | None = None,
               ) -> tuple[int, Any]:
    headers = [(b"authorization", f"Bearer {token}".encode())] if token else []
    path, _, query = path.partition("?")
    scope = {"type": "http", "method": method, "path": path, "query_string": query.encode(), "headers": headers}
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
