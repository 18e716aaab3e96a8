"""The TCP front of a replica's public port: one listener the node owns, one backend at a time.

The node process owns a replica's public ``(host, port)``; the app's containers publish on ephemeral
ports. The front forwards every accepted connection to the backend current when it is accepted, so
a rollout starts the new version, waits until it is healthy, ``switch``es the front to it, and stops
the old one after ``drained(old)`` returned or a grace time passed. A switch never touches open
connections: they keep flowing to the backend they were forwarded to until either end closes.

A per-connection failure (no backend, a backend that refuses or is too slow to connect, a peer that
resets) closes that connection, is counted and logged, and never leaves ``run``.
"""

from __future__ import annotations

import logging
from collections import Counter

import trio

from ._trio_types import TaskStatus

log = logging.getLogger("deedmesh.front")

Backend = tuple[str, int]

# One read per copy step: a few socket buffers' worth keeps bulk transfers fast without holding
# much memory per connection.
READ_BYTES = 64 * 1024

# Open connections per front; more are closed as they come, so a flood of connections to a public
# port cannot take the node's file descriptors (each forwarded connection holds two).
MAX_CONNECTIONS = 1024

# What a peer going away looks like from a trio stream: close quietly, count it, carry on.
_GONE = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


class PortFront:
    """Owns ``(host, port)`` and forwards every TCP connection to the current backend.

    ``counters``: ``accepted`` connections; ``forwarded`` (the backend accepted them), ``refused``
    (no backend, or the backend did not accept within ``connect_timeout_s``), ``over_limit``
    (``max_connections`` were open already), and ``closed`` (forwarded connections that ended,
    for any reason).
    """

    def __init__(self, host: str, port: int, *, connect_timeout_s: float = 5.0,
                 max_connections: int = MAX_CONNECTIONS) -> None:
        self._host = host
        self._port = port  # 0 until run has bound it, if the OS picks
        self._connect_timeout_s = connect_timeout_s
        self._max_connections = max_connections
        self._backend: Backend | None = None
        self._open: Counter[Backend] = Counter()
        self._connection_ended = trio.lowlevel.ParkingLot()
        self.counters: dict[str, int] = dict.fromkeys(("accepted", "forwarded", "refused", "over_limit", "closed"), 0)

    @property
    def port(self) -> int:
        """The bound port once ``run`` has started (the requested one before)."""
        return self._port

    @property
    def backend(self) -> Backend | None:
        return self._backend

    def switch(self, backend: Backend | None) -> None:
        """New connections go to ``backend`` from now on; with None, they are accepted and closed."""
        self._backend = backend

    def open_to(self, backend: Backend) -> int:
        """Connections open right now to ``backend``, including those still connecting to it."""
        return self._open[backend]

    async def drained(self, backend: Backend) -> None:
        """Return once no connection is open to ``backend``."""
        while self._open[backend]:
            await self._connection_ended.park()

    async def run(self, *, task_status: TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Bind, report the bound port, and serve until cancelled; cancelling closes every socket.

        ``host`` should name one address: with several (``localhost``), port 0 binds each to its own.
        """
        try:
            listeners = await trio.open_tcp_listeners(self._port, host=self._host)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot bind the front to {self._host}:{self._port}: {exc.strerror}") from exc
        self._port = listeners[0].socket.getsockname()[1]
        # Already listening: a connection made as soon as start returns waits in the backlog.
        task_status.started(self._port)
        # serve_listeners runs every handler in its own nursery, inside this task, and closes the
        # listeners and every connection when cancelled.
        await trio.serve_listeners(self._serve, listeners)

    async def _serve(self, client: trio.SocketStream) -> None:
        # Read the backend and count the connection before any checkpoint, so that once switch
        # returned, drained(old) waits for every connection that will reach old.
        backend = self._backend
        self.counters["accepted"] += 1
        async with client:
            if backend is None:
                self.counters["refused"] += 1
                log.debug("no backend: connection closed", extra={"front_port": self._port})
                return
            if self._open.total() >= self._max_connections:
                self.counters["over_limit"] += 1
                log.debug("too many open connections: closed", extra={"front_port": self._port})
                return
            self._open[backend] += 1
            try:
                await self._forward(client, backend)
            finally:
                self._open[backend] -= 1
                if not self._open[backend]:
                    del self._open[backend]
                self._connection_ended.unpark_all()

    async def _forward(self, client: trio.SocketStream, backend: Backend) -> None:
        try:
            with trio.fail_after(self._connect_timeout_s):
                upstream = await trio.open_tcp_stream(*backend)
        except (OSError, trio.TooSlowError) as exc:
            self.counters["refused"] += 1
            log.warning(
                "backend did not accept a connection; closed it",
                extra={"front_port": self._port, "backend": f"{backend[0]}:{backend[1]}", "error": repr(exc)},
            )
            return
        self.counters["forwarded"] += 1
        try:
            async with upstream, trio.open_nursery() as nursery:
                nursery.start_soon(self._copy, client, upstream, nursery.cancel_scope)
                nursery.start_soon(self._copy, upstream, client, nursery.cancel_scope)
        finally:
            self.counters["closed"] += 1

    async def _copy(self, source: trio.SocketStream, sink: trio.SocketStream, both: trio.CancelScope) -> None:
        """One direction until EOF, passed on as EOF (half-close); an error ends both directions."""
        try:
            while data := await source.receive_some(READ_BYTES):
                await sink.send_all(data)
            await sink.send_eof()
        except _GONE as exc:
            log.debug("forwarded connection broke", extra={"front_port": self._port, "error": repr(exc)})
            both.cancel()
