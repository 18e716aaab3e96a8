"""Finding and connecting to the container engine (dockerd, or podman's Docker-compatible socket).

The CAR runner speaks the Docker Engine API through the ``docker`` SDK, which works unchanged
against dockerd and rootful podman (shared/notes/containers.md §3). This module owns only the
question "which socket?": it tries, in order,

1. an explicit URL (and nothing else: a caller who names an engine must not silently get another),
2. ``$DOCKER_HOST``,
3. the URL file written by ``scripts/engine.sh`` (``$DEEDMESH_ENGINE_DIR/engine.env``, default
   ``/tmp/deedmesh-engine/engine.env``),
4. ``unix:///var/run/docker.sock`` (Docker's default),
5. ``unix:///run/podman/podman.sock`` (rootful podman's ``podman.socket``),

and keeps the first that answers ``/_ping``.

Every docker SDK call is synchronous network I/O. Under trio, call it from a worker thread
(``await trio.to_thread.run_sync(runner.start, request)``), never on the event loop; this is the
same rule as for web3 (DESIGN.md, "Two seams need care"). The client's connection pool lets a few
worker threads share one client.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import docker
from docker.errors import DockerException
from requests.exceptions import RequestException

from ._errors import MeshError

DEFAULT_ENGINE_DIR = Path("/tmp/deedmesh-engine")
DOCKER_DEFAULT_URL = "unix:///var/run/docker.sock"
PODMAN_ROOTFUL_URL = "unix:///run/podman/podman.sock"
# Long enough for a container stop (default 10 s grace) or an image load; a ping on a dead local
# socket fails at once, so this bounds only engines that accept and then hang.
DEFAULT_TIMEOUT_S = 60.0


class EngineUnavailable(MeshError):
    """No container engine answered; ``tried`` holds one ``(source, url, reason)`` per attempt."""

    def __init__(self, tried: tuple[tuple[str, str, str], ...]) -> None:
        lines = "; ".join(f"{source} {url}: {reason}" for source, url, reason in tried)
        super().__init__(
            f"no container engine answered /_ping (tried {lines or 'nothing'}); "
            "start one with scripts/engine.sh or set DOCKER_HOST"
        )
        self.tried = tried


@dataclass(frozen=True)
class EngineCandidate:
    """One place an engine might listen, and why it is on the list (shown when none answers)."""

    source: str
    url: str


def engine_url_file(environ: Mapping[str, str] | None = None) -> Path:
    """Where ``scripts/engine.sh`` writes ``DOCKER_HOST=<url>`` (follows ``$DEEDMESH_ENGINE_DIR``)."""
    env = os.environ if environ is None else environ
    return Path(env.get("DEEDMESH_ENGINE_DIR", str(DEFAULT_ENGINE_DIR))) / "engine.env"


def read_url_file(path: Path) -> str | None:
    """The URL in an engine.env file (``DOCKER_HOST=unix:///...`` or a bare URL), or None if absent."""
    try:
        text = path.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        value = line.strip().removeprefix("export ").removeprefix("DOCKER_HOST=").strip().strip("'\"")
        if value:
            return value
    return None


def list_engine_candidates(url: str | None = None, environ: Mapping[str, str] | None = None) -> list[EngineCandidate]:
    """The autodetection order as data, so it can be tested and printed without an engine."""
    if url is not None:
        return [EngineCandidate("explicit url", url)]
    env = os.environ if environ is None else environ
    found: list[EngineCandidate] = []
    if env.get("DOCKER_HOST"):
        found.append(EngineCandidate("$DOCKER_HOST", env["DOCKER_HOST"]))
    url_file = engine_url_file(env)
    file_url = read_url_file(url_file)
    if file_url:
        found.append(EngineCandidate(f"url file {url_file}", file_url))
    found.append(EngineCandidate("docker default", DOCKER_DEFAULT_URL))
    found.append(EngineCandidate("podman rootful", PODMAN_ROOTFUL_URL))
    return found


def _probe(candidate: EngineCandidate, timeout_s: float) -> docker.DockerClient:
    """A client for ``candidate`` that has answered a ping; raises with a one-line reason otherwise."""
    if candidate.url.startswith("unix://") and not Path(candidate.url.removeprefix("unix://")).exists():
        raise _ProbeFailed("no such socket")
    try:
        client = docker.DockerClient(base_url=candidate.url, timeout=int(timeout_s))
    except (DockerException, RequestException, ValueError) as exc:
        raise _ProbeFailed(_one_line(exc)) from exc
    try:
        client.ping()
    except (DockerException, RequestException) as exc:
        client.close()
        raise _ProbeFailed(_one_line(exc)) from exc
    return client


class _ProbeFailed(Exception):
    """Internal: why one candidate did not answer."""


def _one_line(exc: BaseException) -> str:
    """The innermost cause ("[Errno 111] Connection refused"), not requests' nested retry wrappers."""
    root = exc
    while (inner := root.__cause__ or root.__context__) is not None:
        root = inner
    text = " ".join(str(root).split()) or type(root).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def connect_engine(
    url: str | None = None, *, environ: Mapping[str, str] | None = None, timeout_s: float = DEFAULT_TIMEOUT_S
) -> docker.DockerClient:
    """Connect to the first engine that answers ``/_ping`` (order in the module docstring).

    Raises ``EngineUnavailable`` naming every place tried and why it failed. Blocking: run it in
    ``trio.to_thread.run_sync`` when called from trio code.
    """
    tried: list[tuple[str, str, str]] = []
    for candidate in _dedupe(list_engine_candidates(url, environ)):
        try:
            return _probe(candidate, timeout_s)
        except _ProbeFailed as exc:
            tried.append((candidate.source, candidate.url, str(exc)))
    raise EngineUnavailable(tuple(tried))


def _dedupe(candidates: list[EngineCandidate]) -> list[EngineCandidate]:
    """Drop later candidates with a URL already listed ($DOCKER_HOST often equals the url file's)."""
    seen: set[str] = set()
    unique = []
    for candidate in candidates:
        if candidate.url not in seen:
            seen.add(candidate.url)
            unique.append(candidate)
    return unique
