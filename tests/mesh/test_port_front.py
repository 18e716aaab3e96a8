"""The TCP front of a replica's port, on real sockets on 127.0.0.1: forwarding, half-close,
switching with no failed request, draining, refusals, binding and shutdown."""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from mesh._port_front import PortFront
from mesh._trio_types import TaskStatus

HOST = "127.0.0.1"
DEADLINE_S = 10  # only ever reached when a test fails; turns a hang into a failure


async def echo_backend(name: bytes, *, task_status: TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED) -> None:
    """A backend that greets each connection with its name, echoes what it reads, and closes at EOF."""

    async def echo(stream: trio.SocketStream) -> None:
        async with stream:
            try:
                await stream.send_all(name + b"\n")
                while data := await stream.receive_some():
                    await stream.send_all(data)
            except trio.BrokenResourceError:
                return

    listeners = await trio.open_tcp_listeners(0, host=HOST)
    task_status.started((HOST, listeners[0].socket.getsockname()[1]))
    await trio.serve_listeners(echo, listeners)


@asynccontextmanager
async def serving(*names: bytes) -> AsyncIterator[tuple[PortFront, list[tuple[str, int]]]]:
    """A front on an OS-picked port and one echo backend per name, all cancelled on exit."""
    async with trio.open_nursery() as nursery:
        backends = [await nursery.start(echo_backend, name) for name in names]
        front = PortFront(HOST, 0)
        await nursery.start(front.run)
        yield front, backends
        nursery.cancel_scope.cancel()


async def read_all(stream: trio.SocketStream) -> bytes:
    chunks = []
    while chunk := await stream.receive_some():
        chunks.append(chunk)
    return b"".join(chunks)


async def read_exactly(stream: trio.SocketStream, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = await stream.receive_some(n - len(data))
        assert chunk, f"EOF after {data!r}"
        data += chunk
    return data


async def probe(port: int) -> bytes:
    """One request: connect, send a line, half-close, read the answer to the end."""
    async with await trio.open_tcp_stream(HOST, port) as stream:
        await stream.send_all(b"ping\n")
        await stream.send_eof()
        return await read_all(stream)


async def unused_port() -> int:
    """A port nothing listens on: bound without listening, released on return."""
    with trio.socket.socket() as sock:
        await sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


async def test_bytes_flow_both_ways_and_a_large_payload_arrives_intact() -> None:
    payload = random.Random(7).randbytes(1024 * 1024)
    with trio.fail_after(DEADLINE_S):
        async with serving(b"A") as (front, [a]):
            front.switch(a)
            async with await trio.open_tcp_stream(HOST, front.port) as client:
                assert await read_exactly(client, 2) == b"A\n"
                await client.send_all(b"hello")
                assert await read_exactly(client, 5) == b"hello"

                async def send() -> None:  # concurrently: the echo fills the buffers both ways
                    await client.send_all(payload)
                    await client.send_eof()

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(send)
                    assert await read_all(client) == payload
            assert front.backend == a
            assert front.counters["accepted"] == front.counters["forwarded"] == 1


async def test_a_half_closed_client_still_receives_the_whole_answer() -> None:
    with trio.fail_after(DEADLINE_S):
        async with serving(b"A") as (front, [a]):
            front.switch(a)
            async with await trio.open_tcp_stream(HOST, front.port) as client:
                await client.send_all(b"GET / HTTP/1.0\r\n\r\n")
                await client.send_eof()  # read_all ends only if the front passes EOF on and the close back
                assert await read_all(client) == b"A\nGET / HTTP/1.0\r\n\r\n"


async def test_a_switch_leaves_open_connections_on_the_old_backend_until_they_drain() -> None:
    with trio.fail_after(DEADLINE_S):
        async with serving(b"A", b"B") as (front, [a, b]), trio.open_nursery() as nursery:
            front.switch(a)
            old = await trio.open_tcp_stream(HOST, front.port)
            assert await read_exactly(old, 2) == b"A\n"
            front.switch(b)
            async with await trio.open_tcp_stream(HOST, front.port) as new:
                assert await read_exactly(new, 2) == b"B\n"
                await old.send_all(b"still here")  # the same connection, so still A's
                assert await read_exactly(old, 10) == b"still here"
                assert (front.open_to(a), front.open_to(b)) == (1, 1)

                drained = trio.Event()

                async def wait_drained() -> None:
                    await front.drained(a)
                    drained.set()

                nursery.start_soon(wait_drained)
                await trio.testing.wait_all_tasks_blocked()
                assert not drained.is_set()
                await old.aclose()
                await drained.wait()
                assert front.open_to(a) == 0
                assert front.open_to(b) == 1
            await front.drained(b)
            assert front.counters["closed"] == 2


async def test_probes_see_no_failure_while_the_front_switches_back_and_forth() -> None:
    probers, probes_each, switch_every = 4, 100, 25
    answers: Counter[bytes] = Counter()
    failures: list[BaseException] = []
    with trio.fail_after(4 * DEADLINE_S):
        async with serving(b"A", b"B") as (front, [a, b]):
            front.switch(a)

            async def probe_loop() -> None:
                for _ in range(probes_each):
                    try:
                        answers[await probe(front.port)] += 1
                    except (OSError, trio.BrokenResourceError) as exc:
                        failures.append(exc)
                    if answers.total() % switch_every == 0:  # while the other probers are mid-request
                        front.switch(b if front.backend == a else a)

            async with trio.open_nursery() as nursery:
                for _ in range(probers):
                    nursery.start_soon(probe_loop)
    assert failures == []
    assert set(answers) == {b"A\nping\n", b"B\nping\n"}
    assert answers.total() == probers * probes_each


async def test_with_no_backend_a_connection_is_accepted_then_closed() -> None:
    with trio.fail_after(DEADLINE_S):
        async with serving() as (front, _):
            assert front.backend is None
            async with await trio.open_tcp_stream(HOST, front.port) as client:
                assert await client.receive_some() == b""
            assert front.counters == {"accepted": 1, "forwarded": 0, "refused": 1, "over_limit": 0, "closed": 0}


async def test_a_dead_backend_is_refused_and_the_front_keeps_serving(caplog: pytest.LogCaptureFixture) -> None:
    dead = (HOST, await unused_port())
    with trio.fail_after(DEADLINE_S), caplog.at_level(logging.WARNING, logger="deedmesh.front"):
        async with serving(b"A") as (front, [a]):
            front.switch(dead)
            async with await trio.open_tcp_stream(HOST, front.port) as client:
                assert await client.receive_some() == b""
            assert front.counters["refused"] == 1
            [record] = caplog.records
            assert record.__dict__["backend"] == f"{HOST}:{dead[1]}"
            assert front.open_to(dead) == 0

            front.switch(a)
            assert await probe(front.port) == b"A\nping\n"
            await front.drained(a)  # the client saw EOF a moment before the front closed its two ends
            assert front.counters == {"accepted": 2, "forwarded": 1, "refused": 1, "over_limit": 0, "closed": 1}


async def test_a_backend_too_slow_to_connect_is_refused() -> None:
    with trio.fail_after(DEADLINE_S):
        async with serving(b"A") as (_, [a]), trio.open_nursery() as nursery:
            impatient = PortFront(HOST, 0, connect_timeout_s=0)  # times out at its first checkpoint
            await nursery.start(impatient.run)
            impatient.switch(a)
            async with await trio.open_tcp_stream(HOST, impatient.port) as client:
                assert await client.receive_some() == b""
            assert impatient.counters["refused"] == 1
            nursery.cancel_scope.cancel()


async def test_binding_a_port_in_use_raises_from_start() -> None:
    with trio.fail_after(DEADLINE_S):
        async with serving() as (taken, _), trio.open_nursery() as nursery:
            with pytest.raises(OSError, match=f"{HOST}:{taken.port}"):
                await nursery.start(PortFront(HOST, taken.port).run)


async def test_cancelling_run_closes_the_listener_and_open_connections() -> None:
    with trio.fail_after(DEADLINE_S):
        async with trio.open_nursery() as nursery:
            a = await nursery.start(echo_backend, b"A")
            front = PortFront(HOST, 0)
            async with trio.open_nursery() as front_nursery:
                await front_nursery.start(front.run)
                front.switch(a)
                client = await trio.open_tcp_stream(HOST, front.port)
                assert await read_exactly(client, 2) == b"A\n"
                front_nursery.cancel_scope.cancel()
            async with client:
                assert await client.receive_some() == b""
            with pytest.raises(OSError, match="all attempts to connect") as refused:
                await trio.open_tcp_stream(HOST, front.port)
            assert isinstance(refused.value.__cause__, ExceptionGroup)
            assert refused.value.__cause__.subgroup(ConnectionRefusedError) is not None
            nursery.cancel_scope.cancel()


async def test_connections_over_the_limit_are_closed_and_the_front_keeps_serving() -> None:
    with trio.fail_after(DEADLINE_S):
        async with trio.open_nursery() as nursery:
            backend = await nursery.start(echo_backend, b"A")
            front = PortFront(HOST, 0, max_connections=2)
            await nursery.start(front.run)
            front.switch(backend)
            held = [await trio.open_tcp_stream(HOST, front.port) for _ in range(2)]
            for stream in held:
                assert await read_exactly(stream, 2) == b"A\n"  # both forwarded and open
            async with await trio.open_tcp_stream(HOST, front.port) as third:
                assert await read_all(third) == b""  # closed at once
            assert front.counters["over_limit"] == 1
            await held[0].aclose()
            while front.open_to(backend) > 1:  # noqa: ASYNC110 (the front ends it once the backend closed too)
                await trio.sleep(0.01)  # polling real sockets, under the test's deadline
            assert await probe(front.port) == b"A\nping\n"  # room again
            await held[1].aclose()
            assert (front.counters["forwarded"], front.counters["over_limit"]) == (3, 1)
            nursery.cancel_scope.cancel()
