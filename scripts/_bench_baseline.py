"""Baseline for the mesh benchmarks: raw py-libp2p gossipsub with deedmesh's host settings and the
naive liveness design, without deedmesh's envelopes, validators or membership protocol.

Hosts come from ``mesh._transport_libp2p.open_libp2p_transport`` (our one host factory: Noise,
Yamux, D=6/4/12, 1 s gossipsub heartbeat, adaptive gossip off, spam limiter raised) and carry plain
bytes on topics with NO validator. The naive liveness design: every node publishes a 100-byte
heartbeat (sender index + monotonic send time) every ``interval_s`` on ``bench/heartbeat``, and
judges a peer dead once it has heard nothing from it for 3 x ``interval_s`` (local receipt time).

Library functions (each returns a JSON-ready dict of floats):
  propagation_inprocess(n, messages, rate_per_s, seed)   N hosts in this process (trio)
  propagation_processes(n, messages, rate_per_s, seed)   N worker processes, one host each
  idle_inprocess(n, interval_s, warmup_s, measure_s, seed)  CPU and RSS of N hosts heartbeating
  detection_processes(n, interval_s, seed)               time to judge a SIGKILLed / SIGSTOPped node dead

Topology everywhere: node i dials node i-1 (so the graph is connected) plus random others (seeded)
up to min(6, n-1) dials. Measurements start only once every node's gossipsub mesh has formed: each
node knows >= min(D_lo, n-1) subscribed peers, has a mesh of >= min(D_lo, its subscribed peers), and
the union of all mesh links is one connected graph (polled with a deadline).

Worker processes (``python scripts/_bench_baseline.py worker ...``) take JSON commands on stdin and
answer with JSON lines on stdout; they exit when stdin closes. Every worker is stopped by its PID
(graceful quit, then SIGKILL), also on failure. ``python scripts/_bench_baseline.py`` alone runs a
small smoke set and prints JSON.

Percentiles over no values are NaN (json.dumps writes NaN). RSS figures are of this process: run
``idle_inprocess`` in a fresh process, or rss_mb_per_node absorbs memory earlier runs freed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import queue
import random
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Sequence
from contextlib import AsyncExitStack, aclosing, asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from mesh._identity import NodeIdentity
from mesh._transport import Message
from mesh._transport_libp2p import Libp2pConfig, Libp2pTransport, open_libp2p_transport

TOPIC_PROP = "bench/propagation"
TOPIC_HB = "bench/heartbeat"
PAYLOAD_BYTES = 100
DEAD_AFTER_INTERVALS = 3
MAX_DIALS = 6
D_LO = Libp2pConfig().degree_low
DIAL_TIMEOUT_S = 10.0
POLL_S = 0.1
STATUS_TIMEOUT_S = 10.0  # a live worker answers a status command in milliseconds

_PROP_HEADER = struct.Struct(">IIq")  # message id, sender index, send time (ns)
_HB_HEADER = struct.Struct(">Iq")  # sender index, monotonic send time (ns)


# ---------------------------------------------------------------------------------------------
# shared helpers


def quiet_libp2p_logs() -> None:
    """Silence py-libp2p: it logs routine reconnect failures at ERROR, and its ``libp2p`` logger
    does not propagate, so without a handler Python's last-resort handler prints them to stderr."""
    lg = logging.getLogger("libp2p")
    if not any(isinstance(h, logging.NullHandler) for h in lg.handlers):
        lg.addHandler(logging.NullHandler())
    lg.setLevel(logging.CRITICAL + 1)
    lg.propagate = False


def node_identity(seed: int, index: int) -> NodeIdentity:
    """A deterministic node key (a secp256k1 scalar; sha256 output is valid with overwhelming odds)."""
    return NodeIdentity(hashlib.sha256(f"deedmesh-bench-{seed}-{index}".encode()).digest())


def dial_plan(n: int, rng: random.Random, dials: int | None = None) -> list[list[int]]:
    """Node i dials i-1 (connectivity) plus random others, min(dials or MAX_DIALS, n-1) targets in all."""
    k = min(dials or MAX_DIALS, n - 1)
    plan: list[list[int]] = []
    for i in range(n):
        targets = {i - 1} if i > 0 else set()
        others = [j for j in range(n) if j != i and j not in targets]
        rng.shuffle(others)
        while len(targets) < k:
            targets.add(others.pop())
        plan.append(sorted(targets))
    return plan


def mesh_ready(n: int, topic_peers: Sequence[set[int]], mesh: Sequence[set[int]]) -> bool:
    """Every node knows enough subscribed peers and has a full enough mesh; mesh links connect all."""
    for i in range(n):
        if len(topic_peers[i]) < min(D_LO, n - 1):
            return False
        if len(mesh[i]) < min(D_LO, len(topic_peers[i])):
            return False
    adjacency: list[set[int]] = [set() for _ in range(n)]
    for i in range(n):
        for j in mesh[i]:
            if 0 <= j < n and j != i:
                adjacency[i].add(j)
                adjacency[j].add(i)
    seen = {0}
    stack = [0]
    while stack:
        for j in adjacency[stack.pop()]:
            if j not in seen:
                seen.add(j)
                stack.append(j)
    return len(seen) == n


def _mesh_summary(topic_peers: Sequence[set[int]], mesh: Sequence[set[int]]) -> str:
    return "; ".join(f"{i}: subscribed={sorted(tp)} mesh={sorted(m)}" for i, (tp, m) in enumerate(zip(topic_peers, mesh,
                                                                                                      strict=True)))


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in [0, 100]); NaN for no values."""
    if not values:
        return math.nan
    s = sorted(values)
    pos = (len(s) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def _prop_payload(mid: int, sender: int, t_ns: int, size: int) -> bytes:
    head = _PROP_HEADER.pack(mid, sender, t_ns)
    return head + b"\0" * max(0, size - len(head))


def _hb_payload(sender: int, size: int = PAYLOAD_BYTES) -> bytes:
    head = _HB_HEADER.pack(sender, time.monotonic_ns())
    return head + b"\0" * max(0, size - len(head))


def _prop_stats(n: int, sent: dict[int, tuple[int, float]], received: dict[int, dict[int, float]],
                dups: int) -> dict[str, float]:
    """Full-propagation (all n-1 others) and per-delivery latency in ms, from send/receive times in s."""
    full: list[float] = []
    per: list[float] = []
    delivered = 0
    for mid, (sender, t_sent) in sent.items():
        got = {i: t for i, t in received.get(mid, {}).items() if i != sender}
        delivered += len(got)
        per.extend((t - t_sent) * 1e3 for t in got.values())
        if len(got) == n - 1:
            full.append((max(got.values()) - t_sent) * 1e3)
    expected = len(sent) * (n - 1)
    return {
        "p50_ms": percentile(full, 50), "p99_ms": percentile(full, 99),
        "lost": float(expected - delivered),
        "expected": float(expected),
        "published": float(len(sent)),
        "incomplete_messages": float(len(sent) - len(full)),
        "delivery_p50_ms": percentile(per, 50), "delivery_p99_ms": percentile(per, 99),
        "dups": float(dups),
    }


def _rss_mb() -> float:
    """Current resident set size of this process (VmRSS), MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmRSS in /proc/self/status")


# ---------------------------------------------------------------------------------------------
# in-process hosts


def _libp2p_view(t: Libp2pTransport, topic: str, index_of: dict[str, int]) -> tuple[set[int], set[int]]:
    """(subscribed peers, mesh peers) of one host for ``topic``, as node indices (libp2p internals)."""
    pubsub: Any = t._pubsub
    topic_peers = {index_of[str(p)] for p in list(pubsub.peer_topics.get(topic, ())) if str(p) in index_of}
    mesh = {index_of[str(p)] for p in list(pubsub.router.mesh.get(topic, ())) if str(p) in index_of}
    return topic_peers, mesh


@dataclass
class _Hosts:
    transports: list[Libp2pTransport]
    index_of: dict[str, int]
    channels: list[trio.MemoryReceiveChannel[Message]]
    mesh_s: float
    dial_failures: int


async def _start_hosts(stack: AsyncExitStack, n: int, seed: int, topic: str, mesh_timeout_s: float) -> _Hosts:
    """Start n hosts, subscribe each to ``topic``, dial the plan, and wait for the mesh."""
    if n < 2:
        raise ValueError("need at least 2 nodes")
    quiet_libp2p_logs()
    rng = random.Random(seed)
    transports = [await stack.enter_async_context(open_libp2p_transport(node_identity(seed, i))) for i in range(n)]
    index_of = {t.local_id: i for i, t in enumerate(transports)}
    channels = [await t.subscribe(topic) for t in transports]
    failures = 0

    async def dial(i: int, j: int) -> None:
        nonlocal failures
        with trio.move_on_after(DIAL_TIMEOUT_S) as scope:
            try:
                await transports[i].connect(transports[j].addrs()[0])
            except Exception:
                failures += 1
        if scope.cancelled_caught:
            failures += 1

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        for i, targets in enumerate(dial_plan(n, rng)):
            for j in targets:
                nursery.start_soon(dial, i, j)
    deadline = start + mesh_timeout_s
    while True:
        views = [_libp2p_view(t, topic, index_of) for t in transports]
        topic_peers, mesh = [v[0] for v in views], [v[1] for v in views]
        if mesh_ready(n, topic_peers, mesh):
            break
        if trio.current_time() > deadline:
            raise TimeoutError(f"gossipsub mesh not formed within {mesh_timeout_s:.0f} s "
                               f"(dial failures {failures}): {_mesh_summary(topic_peers, mesh)}")
        await trio.sleep(POLL_S)
    return _Hosts(transports, index_of, channels, trio.current_time() - start, failures)


@asynccontextmanager
async def _host_stack() -> AsyncIterator[AsyncExitStack]:
    """An exit stack for hosts that stops them all at once: py-libp2p hosts closed one by one while
    the others still send to them crash with "Nursery is closed to new arrivals" (a push_msg task
    spawned into a pubsub service that is shutting down)."""
    failure: BaseException | None = None
    with trio.CancelScope() as scope:
        async with AsyncExitStack() as stack:
            try:
                yield stack
            except BaseException as exc:  # re-raised below: the cancelled teardown must not swallow it
                failure = exc
                raise
            finally:
                scope.cancel()
    if failure is not None:
        raise failure


def _default_mesh_timeout(n: int) -> float:
    return 15.0 + 0.5 * n


async def propagation_inprocess(n: int, messages: int, rate_per_s: float, seed: int, *,
                                payload_bytes: int = PAYLOAD_BYTES, drain_s: float = 10.0,
                                mesh_timeout_s: float | None = None) -> dict[str, float]:
    """N hosts in this trio process; ``messages`` payloads published from random nodes at
    ``rate_per_s`` (paced on a fixed schedule), each carrying its ``time.perf_counter`` send time.

    p50_ms / p99_ms: time until ALL n-1 other nodes received a message, over messages that reached all;
    lost: deliveries (message, receiver) still missing ``drain_s`` after the last publish.
    Extras: mesh_s (dial start to mesh formed), delivery_p50/p99_ms (each receiver separately),
    dups (a message delivered twice to one subscriber), wall_s / cpu_s of the publish+drain phase.
    """
    rng = random.Random(seed + 1)
    async with _host_stack() as stack:
        hosts = await _start_hosts(stack, n, seed, TOPIC_PROP,
                                   mesh_timeout_s if mesh_timeout_s is not None else _default_mesh_timeout(n))
        sent: dict[int, tuple[int, float]] = {}
        received: dict[int, dict[int, float]] = {}
        dups = 0
        expected = messages * (n - 1)
        count = 0
        all_in = trio.Event()

        async def receive(i: int) -> None:
            nonlocal dups, count
            async for msg in hosts.channels[i]:
                now = time.perf_counter()
                mid, sender, _ = _PROP_HEADER.unpack_from(msg.data)
                if sender == i:
                    continue
                got = received.setdefault(mid, {})
                if i in got:
                    dups += 1
                    continue
                got[i] = now
                count += 1
                if count >= expected:
                    all_in.set()

        cpu0, wall0 = time.process_time(), time.perf_counter()
        async with trio.open_nursery() as nursery:
            for i in range(n):
                nursery.start_soon(receive, i)
            t0 = trio.current_time()
            for mid in range(messages):
                await trio.sleep_until(t0 + mid / rate_per_s)
                sender = rng.randrange(n)
                t_sent = time.perf_counter()
                sent[mid] = (sender, t_sent)
                await hosts.transports[sender].publish(TOPIC_PROP, _prop_payload(mid, sender, 0, payload_bytes))
            with trio.move_on_after(drain_s):
                await all_in.wait()
            nursery.cancel_scope.cancel()
        cpu1, wall1 = time.process_time(), time.perf_counter()
        out = _prop_stats(n, sent, received, dups)
        out.update(mesh_s=hosts.mesh_s, dial_failures=float(hosts.dial_failures), wall_s=wall1 - wall0,
                   cpu_s=cpu1 - cpu0)
        return out


class _Liveness:
    """Naive failure detector: a peer is dead after DEAD_AFTER_INTERVALS x interval of silence."""

    def __init__(self, interval_s: float, on_change: Callable[[int, bool], None]) -> None:
        self.timeout_s = DEAD_AFTER_INTERVALS * interval_s
        self.interval_s = interval_s
        self.last: dict[int, float] = {}
        self.alive: set[int] = set()
        self.on_change = on_change

    def heard(self, peer: int) -> None:
        self.last[peer] = trio.current_time()
        if peer not in self.alive:
            self.alive.add(peer)
            self.on_change(peer, True)

    async def run(self) -> None:
        # deadlines only move later when a heartbeat arrives, so sleeping until the earliest known
        # one is exact; with no alive peer, wake each interval (a new peer's deadline is 3 away)
        while True:
            now = trio.current_time()
            for peer in sorted(self.alive):
                if now >= self.last[peer] + self.timeout_s:
                    self.alive.discard(peer)
                    self.on_change(peer, False)
            wake = min((self.last[p] + self.timeout_s for p in self.alive), default=now + self.interval_s)
            await trio.sleep_until(wake)


async def _heartbeat(transport: Libp2pTransport, index: int, interval_s: float, phase_s: float) -> None:
    """Publish a heartbeat every interval_s (first after phase_s); skip ticks missed under load."""
    await trio.sleep(phase_s)
    next_t = trio.current_time()
    while True:
        await transport.publish(TOPIC_HB, _hb_payload(index))
        next_t = max(next_t + interval_s, trio.current_time())
        await trio.sleep_until(next_t)


async def _hb_receiver(channel: trio.MemoryReceiveChannel[Message], index: int, liveness: _Liveness,
                       on_receive: Callable[[], None] | None = None) -> None:
    async for msg in channel:
        sender, _ = _HB_HEADER.unpack_from(msg.data)
        if sender != index:
            liveness.heard(sender)
            if on_receive is not None:
                on_receive()


async def idle_inprocess(n: int, interval_s: float, warmup_s: float, measure_s: float, seed: int, *,
                         mesh_timeout_s: float | None = None) -> dict[str, float]:
    """N hosts in this process running the naive heartbeat design (and nothing else).

    After the mesh formed and ``warmup_s`` of heartbeating, over ``measure_s``:
    cpu_core_fraction = process CPU time / wall time (1.0 = one core saturated);
    rss_mb = VmRSS at the end; rss_mb_per_node = (rss_mb - rss_mb_base) / n, where rss_mb_base is
    VmRSS just before the hosts started (interpreter + imports + whatever this process held before).
    Extras: false_dead (dead judgements of live peers during the measurement), heartbeats_rx_per_s,
    all_alive_at_start (1.0 if every node saw every other alive when measuring began).
    """
    rss_base = _rss_mb()
    rng = random.Random(seed + 2)
    async with _host_stack() as stack:
        hosts = await _start_hosts(stack, n, seed, TOPIC_HB,
                                   mesh_timeout_s if mesh_timeout_s is not None else _default_mesh_timeout(n))
        measuring = False
        false_dead = 0
        rx = 0

        def make_liveness(i: int) -> _Liveness:
            def on_change(peer: int, alive: bool) -> None:
                nonlocal false_dead
                if not alive and measuring:
                    false_dead += 1
            return _Liveness(interval_s, on_change)

        detectors = [make_liveness(i) for i in range(n)]

        def count_rx() -> None:
            nonlocal rx
            rx += 1

        async with trio.open_nursery() as nursery:
            for i in range(n):
                nursery.start_soon(_hb_receiver, hosts.channels[i], i, detectors[i], count_rx)
                nursery.start_soon(detectors[i].run)
                nursery.start_soon(_heartbeat, hosts.transports[i], i, interval_s, rng.uniform(0, interval_s))
            await trio.sleep(warmup_s)
            all_alive = all(len(d.alive) == n - 1 for d in detectors)
            measuring = True
            rx0 = rx
            cpu0, wall0 = time.process_time(), time.perf_counter()
            await trio.sleep(measure_s)
            cpu1, wall1 = time.process_time(), time.perf_counter()
            rx1 = rx
            rss = _rss_mb()
            nursery.cancel_scope.cancel()
        wall = wall1 - wall0
        return {
            "cpu_core_fraction": (cpu1 - cpu0) / wall,
            "rss_mb": rss, "rss_mb_per_node": (rss - rss_base) / n, "rss_mb_base": rss_base,
            "false_dead": float(false_dead), "heartbeats_rx_per_s": (rx1 - rx0) / wall,
            "heartbeats_rx_expected_per_s": n * (n - 1) / interval_s,
            "all_alive_at_start": 1.0 if all_alive else 0.0, "mesh_s": hosts.mesh_s,
        }


# ---------------------------------------------------------------------------------------------
# worker processes


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


async def _stdin_lines() -> AsyncGenerator[dict[str, Any], None]:
    stream = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    buf = b""
    async with stream:
        while True:
            chunk = await stream.receive_some(65536)
            if not chunk:
                return
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if line.strip():
                    yield json.loads(line)


async def _worker(index: int, seed: int, topic: str) -> None:
    """One host. Commands: dial, status, pub, hb, quit. Exits when stdin closes."""
    quiet_libp2p_logs()
    async with open_libp2p_transport(node_identity(seed, index)) as t:
        channel = await t.subscribe(topic)
        _emit({"ev": "ready", "i": index, "id": t.local_id, "addrs": t.addrs(), "pid": os.getpid()})
        async with trio.open_nursery() as nursery:
            if topic == TOPIC_PROP:
                nursery.start_soon(_worker_prop_receiver, channel, index)

            async with aclosing(_stdin_lines()) as commands:
                async for cmd in commands:
                    op = cmd["cmd"]
                    if op == "dial":
                        ok = failed = 0
                        for addr in cmd["addrs"]:
                            with trio.move_on_after(DIAL_TIMEOUT_S):
                                try:
                                    await t.connect(addr)
                                    ok += 1
                                    continue
                                except Exception:
                                    pass
                            failed += 1
                        _emit({"ev": "dialed", "i": index, "ok": ok, "failed": failed})
                    elif op == "status":
                        pubsub: Any = t._pubsub
                        _emit({"ev": "status", "i": index, "q": cmd["q"],
                               "topic_peers": [str(p) for p in list(pubsub.peer_topics.get(topic, ()))],
                               "mesh": [str(p) for p in list(pubsub.router.mesh.get(topic, ()))]})
                    elif op == "pub":
                        t_ns = time.time_ns()
                        await t.publish(topic, _prop_payload(cmd["mid"], index, t_ns, cmd["size"]))
                    elif op == "hb":
                        def on_change(peer: int, alive: bool) -> None:
                            _emit({"ev": "alive" if alive else "dead", "i": index, "peer": peer, "t": time.time_ns()})

                        liveness = _Liveness(cmd["interval_s"], on_change)
                        nursery.start_soon(_hb_receiver, channel, index, liveness)
                        nursery.start_soon(liveness.run)
                        nursery.start_soon(_heartbeat, t, index, cmd["interval_s"], cmd["phase_s"])
                    elif op == "quit":
                        break
            nursery.cancel_scope.cancel()


async def _worker_prop_receiver(channel: trio.MemoryReceiveChannel[Message], index: int) -> None:
    async for msg in channel:
        now = time.time_ns()
        mid, sender, t_sent = _PROP_HEADER.unpack_from(msg.data)
        if sender != index:
            _emit({"ev": "rx", "i": index, "mid": mid, "s": sender, "ts": t_sent, "t": now})


@dataclass
class _Fleet:
    """N worker processes (one host each) driven through stdin/stdout JSON lines."""

    n: int
    seed: int
    topic: str
    procs: list[subprocess.Popen[str]] = field(default_factory=list)
    events: queue.Queue[tuple[int, dict[str, Any]]] = field(default_factory=queue.Queue)
    ids: dict[str, int] = field(default_factory=dict)
    addrs: dict[int, str] = field(default_factory=dict)
    gone: set[int] = field(default_factory=set)
    _logdir: tempfile.TemporaryDirectory[str] | None = None
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        self._logdir = tempfile.TemporaryDirectory(prefix="bench-baseline-")
        env = dict(os.environ)
        env.pop("LIBP2P_DEBUG", None)
        script = str(Path(__file__).resolve())
        for i in range(self.n):
            with open(Path(self._logdir.name) / f"{i}.err", "w") as err:
                p = subprocess.Popen(
                    [sys.executable, script, "worker", str(i), str(self.seed), self.topic],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True, bufsize=1, env=env,
                    start_new_session=True)  # our own signals only reach the processes we mean
            self.procs.append(p)
            th = threading.Thread(target=self._read, args=(i, p), daemon=True)
            th.start()
            self._threads.append(th)

    def _read(self, i: int, p: subprocess.Popen[str]) -> None:
        assert p.stdout is not None
        for line in p.stdout:
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            self.events.put((i, ev))
        self.events.put((i, {"ev": "eof"}))

    def stderr_tail(self, i: int, chars: int = 1500) -> str:
        if self._logdir is None:
            return ""
        try:
            return (Path(self._logdir.name) / f"{i}.err").read_text()[-chars:]
        except OSError:
            return ""

    def send(self, i: int, obj: dict[str, Any]) -> None:
        stdin = self.procs[i].stdin
        assert stdin is not None
        stdin.write(json.dumps(obj) + "\n")
        stdin.flush()

    def next_event(self, deadline: float) -> tuple[int, dict[str, Any]] | None:
        """The next event, or None at ``deadline`` (time.monotonic). A worker's unexpected exit raises."""
        timeout = deadline - time.monotonic()
        if timeout <= 0:
            try:
                i, ev = self.events.get_nowait()
            except queue.Empty:
                return None
        else:
            try:
                i, ev = self.events.get(timeout=timeout)
            except queue.Empty:
                return None
        if ev["ev"] == "eof" and i not in self.gone:
            raise RuntimeError(f"worker {i} exited (rc {self.procs[i].poll()}): {self.stderr_tail(i)}")
        return i, ev

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.addrs) < self.n:
            got = self.next_event(deadline)
            if got is None:
                raise TimeoutError(f"only {len(self.addrs)}/{self.n} workers ready within {timeout_s:.0f} s")
            i, ev = got
            if ev["ev"] == "ready":
                self.ids[ev["id"]] = i
                self.addrs[i] = ev["addrs"][0]

    def connect(self, rng: random.Random, timeout_s: float) -> int:
        """Run the dial plan; returns the number of failed dials."""
        for i, targets in enumerate(dial_plan(self.n, rng)):
            self.send(i, {"cmd": "dial", "addrs": [self.addrs[j] for j in targets]})
        deadline = time.monotonic() + timeout_s
        done: dict[int, int] = {}
        while len(done) < self.n:
            got = self.next_event(deadline)
            if got is None:
                raise TimeoutError(f"only {len(done)}/{self.n} workers finished dialing within {timeout_s:.0f} s")
            i, ev = got
            if ev["ev"] == "dialed":
                done[i] = ev["failed"]
        return sum(done.values())

    def wait_mesh(self, timeout_s: float, on_other: Callable[[int, dict[str, Any]], None] | None = None) -> None:
        deadline = time.monotonic() + timeout_s
        q = 0
        while True:
            q += 1
            for i in range(self.n):
                self.send(i, {"cmd": "status", "q": q})
            topic_peers: dict[int, set[int]] = {}
            mesh: dict[int, set[int]] = {}
            reply_deadline = time.monotonic() + STATUS_TIMEOUT_S
            while len(topic_peers) < self.n:
                got = self.next_event(reply_deadline)
                if got is None:
                    raise TimeoutError(f"no status from {self.n - len(topic_peers)} workers within "
                                       f"{STATUS_TIMEOUT_S:.0f} s")
                i, ev = got
                if ev["ev"] == "status" and ev["q"] == q:
                    topic_peers[i] = {self.ids[p] for p in ev["topic_peers"] if p in self.ids}
                    mesh[i] = {self.ids[p] for p in ev["mesh"] if p in self.ids}
                elif on_other is not None:
                    on_other(i, ev)
            tp = [topic_peers[i] for i in range(self.n)]
            ms = [mesh[i] for i in range(self.n)]
            if mesh_ready(self.n, tp, ms):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"gossipsub mesh not formed within {timeout_s:.0f} s: {_mesh_summary(tp, ms)}")
            time.sleep(POLL_S * 2)

    def signal(self, i: int, sig: signal.Signals) -> None:
        os.kill(self.procs[i].pid, sig)

    def close(self) -> None:
        """Stop every worker by PID: SIGCONT (in case it is stopped), quit, then SIGKILL."""
        for i, p in enumerate(self.procs):
            self.gone.add(i)
            if p.poll() is None:
                try:
                    os.kill(p.pid, signal.SIGCONT)
                    self.send(i, {"cmd": "quit"})
                except OSError:
                    pass
            try:
                if p.stdin is not None:
                    p.stdin.close()
            except OSError:
                pass
        deadline = time.monotonic() + 3.0
        for p in self.procs:
            try:
                p.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()  # SIGKILL to this PID
                p.wait(timeout=5.0)
        for th in self._threads:
            th.join(timeout=2.0)
        for p in self.procs:
            if p.stdout is not None:
                p.stdout.close()
        if self._logdir is not None:
            self._logdir.cleanup()


def _startup_timeout(n: int) -> float:
    # each worker pays ~2-3 s CPU of imports (libp2p + mesh); 2 shared cores
    return 30.0 + 3.0 * n


def propagation_processes(n: int, messages: int, rate_per_s: float, seed: int, *,
                          payload_bytes: int = PAYLOAD_BYTES, drain_s: float = 10.0,
                          mesh_timeout_s: float | None = None) -> dict[str, float]:
    """As ``propagation_inprocess`` but with N OS processes, one host each. The launcher paces
    ``pub`` commands to random workers; the publishing worker stamps ``time.time_ns()`` just before
    ``publish``; receivers stamp ``time.time_ns()`` on receipt (one machine, one wall clock).
    Extras: startup_s (spawn to all ready), mesh_s (dial start to mesh formed)."""
    if n < 2:
        raise ValueError("need at least 2 nodes")
    rng = random.Random(seed)
    pick = random.Random(seed + 1)
    fleet = _Fleet(n, seed, TOPIC_PROP)
    try:
        t_start = time.monotonic()
        fleet.start()
        fleet.wait_ready(_startup_timeout(n))
        t_ready = time.monotonic()
        failures = fleet.connect(rng, DIAL_TIMEOUT_S * MAX_DIALS + 10.0)
        fleet.wait_mesh(mesh_timeout_s if mesh_timeout_s is not None else _default_mesh_timeout(n))
        t_mesh = time.monotonic()

        sent: dict[int, tuple[int, float]] = {}
        received: dict[int, dict[int, float]] = {}
        dups = 0
        count = 0
        expected = messages * (n - 1)

        def absorb(i: int, ev: dict[str, Any]) -> None:
            nonlocal dups, count
            if ev["ev"] != "rx":
                return
            sent.setdefault(ev["mid"], (ev["s"], ev["ts"] / 1e9))
            got = received.setdefault(ev["mid"], {})
            if i in got:
                dups += 1
                return
            got[i] = ev["t"] / 1e9
            count += 1

        t0 = time.monotonic()
        senders = [pick.randrange(n) for _ in range(messages)]
        for mid, sender in enumerate(senders):
            target = t0 + mid / rate_per_s
            while (got := fleet.next_event(target)) is not None:
                absorb(*got)
            fleet.send(sender, {"cmd": "pub", "mid": mid, "size": payload_bytes})
        deadline = time.monotonic() + drain_s
        while count < expected and (got := fleet.next_event(deadline)) is not None:
            absorb(*got)
        # a message nobody received leaves no send time: count it as published by its sender with
        # all its deliveries lost (the worker got the command; we cannot see whether it published)
        for mid, sender in enumerate(senders):
            sent.setdefault(mid, (sender, math.nan))
        out = _prop_stats(n, sent, received, dups)
        out.update(startup_s=t_ready - t_start, mesh_s=t_mesh - t_ready, dial_failures=float(failures),
                   wall_s=time.monotonic() - t0)
        return out
    finally:
        fleet.close()


def detection_processes(n: int, interval_s: float, seed: int, *, mesh_timeout_s: float | None = None,
                        detect_timeout_s: float | None = None) -> dict[str, float]:
    """N worker processes running naive heartbeats (random phase each). Once the mesh is up and every
    node sees every other alive: SIGKILL one node and measure the time from the kill until EVERY
    survivor has judged it dead (each survivor stamps its judgement with time.time_ns()); then, once
    the survivors all see each other alive, SIGSTOP another node and measure the same; then SIGCONT
    and stop it. sigkill_s / sigstop_s are the slowest survivor; extras: *_first_s the fastest one,
    false_dead (dead judgements of live nodes during the whole run), alive_s (hb start to all alive)."""
    if n < 3:
        raise ValueError("need at least 3 nodes (one killed, one stopped, one observer)")
    rng = random.Random(seed)
    pick = random.Random(seed + 1)
    fleet = _Fleet(n, seed, TOPIC_HB)
    state: dict[tuple[int, int], tuple[bool, int]] = {}  # (observer, peer) -> (alive, wall ns)
    down: set[int] = set()  # nodes we killed or stopped (judging them dead is not false)
    false_dead = 0

    def absorb(i: int, ev: dict[str, Any]) -> None:
        nonlocal false_dead
        if ev["ev"] in ("alive", "dead"):
            alive = ev["ev"] == "alive"
            state[(i, ev["peer"])] = (alive, ev["t"])
            if not alive and ev["peer"] not in down:
                false_dead += 1

    def all_alive(members: Sequence[int]) -> bool:
        return all(state.get((o, p), (False, 0))[0] for o in members for p in members if o != p)

    def pump_until(pred: Callable[[], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not pred():
            got = fleet.next_event(deadline)
            if got is None:
                raise TimeoutError(f"{what}: not within {timeout_s:.0f} s")
            absorb(*got)

    def measure(victim: int, sig: signal.Signals, observers: list[int], timeout_s: float) -> tuple[float, float]:
        pump_until(lambda: all_alive([*observers, victim]), timeout_s, "all nodes alive before the fault")
        down.add(victim)
        t_fault = time.time_ns()
        fleet.signal(victim, sig)
        if sig == signal.SIGKILL:
            fleet.gone.add(victim)
        pump_until(lambda: all(not state[(o, victim)][0] for o in observers), timeout_s,
                   f"every survivor judging node {victim} dead after {sig.name}")
        delays = [max(0, state[(o, victim)][1] - t_fault) / 1e9 for o in observers]
        return max(delays), min(delays)

    try:
        fleet.start()
        fleet.wait_ready(_startup_timeout(n))
        fleet.connect(rng, DIAL_TIMEOUT_S * MAX_DIALS + 10.0)
        fleet.wait_mesh(mesh_timeout_s if mesh_timeout_s is not None else _default_mesh_timeout(n), absorb)
        t_hb = time.monotonic()
        for i in range(n):
            fleet.send(i, {"cmd": "hb", "interval_s": interval_s, "phase_s": pick.uniform(0, interval_s)})
        wait_s = detect_timeout_s if detect_timeout_s is not None else DEAD_AFTER_INTERVALS * interval_s + 15.0
        pump_until(lambda: all_alive(range(n)), wait_s, "every node seeing every other alive")
        alive_s = time.monotonic() - t_hb
        killed, stopped = pick.sample(range(n), 2)
        survivors = [i for i in range(n) if i != killed]
        sigkill_s, sigkill_first_s = measure(killed, signal.SIGKILL, survivors, wait_s)
        observers = [i for i in survivors if i != stopped]
        sigstop_s, sigstop_first_s = measure(stopped, signal.SIGSTOP, observers, wait_s)
        fleet.gone.add(stopped)
        fleet.signal(stopped, signal.SIGCONT)
        fleet.signal(stopped, signal.SIGKILL)
        return {"sigkill_s": sigkill_s, "sigstop_s": sigstop_s, "sigkill_first_s": sigkill_first_s,
                "sigstop_first_s": sigstop_first_s, "dead_after_s": DEAD_AFTER_INTERVALS * interval_s,
                "false_dead": float(false_dead), "alive_s": alive_s}
    finally:
        fleet.close()


# ---------------------------------------------------------------------------------------------


def _smoke() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, run in (
        ("propagation_inprocess", lambda: trio.run(propagation_inprocess, 5, 30, 5.0, 1)),
        ("idle_inprocess", lambda: trio.run(idle_inprocess, 5, 1.0, 3.0, 5.0, 1)),
        ("propagation_processes", lambda: propagation_processes(4, 30, 5.0, 1)),
        ("detection_processes", lambda: detection_processes(4, 1.0, 1)),
    ):
        t = time.monotonic()
        out[name] = run()
        out[name]["run_s"] = time.monotonic() - t
    return out


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "worker":
        trio.run(_worker, int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
    else:
        print(json.dumps(_smoke(), indent=2))


# --------------------------------------------------------------------------------------------
# helpers shared by the benchmarks that run ``deedmesh node run`` processes and write JSON

NODE_PASSWORD = "bench"


def spawn_node(i: int, ident: NodeIdentity, workdir: Path, rpc: str, record: Path, ready: list[dict[str, Any]],
               extra: Sequence[str] = (), stderr: Any = subprocess.DEVNULL, log_level: str = "warning",
               ) -> subprocess.Popen[str]:
    """Start node ``i`` as a ``deedmesh node run`` process (bootstrapping to the first node in
    ``ready``), wait for its ready line and append it to ``ready``; the caller stops the process."""
    from contracts._anvil import free_port
    from mesh._identity import write_keystore

    key = write_keystore(workdir / f"node{i}.json", ident, NODE_PASSWORD, scrypt_n=2**10)
    args = [str(Path(sys.executable).parent / "deedmesh"), "--log-level", log_level, "--log-format", "json",
            "node", "run", "--key", str(key), "--rpc", rpc,
            "--deployment", str(record), "--api-port", str(free_port()), *extra]
    if ready:
        args += ["--bootstrap", ready[0]["addrs"][0]]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=stderr, text=True,
                            env=os.environ | {"DEEDMESH_KEY_PASSWORD": NODE_PASSWORD})
    assert proc.stdout is not None
    import select
    if not select.select([proc.stdout], [], [], 90)[0]:
        proc.kill()
        proc.wait()
        raise TimeoutError(f"node {i} did not start")
    ready.append(json.loads(proc.stdout.readline()))
    return proc


@contextmanager
def project_engine(root: Path) -> Iterator[Any]:
    """A docker client on the project's engine (``scripts/engine.sh``), stopped again by its PID
    if this call started it."""
    from mesh._engine import DEFAULT_ENGINE_DIR, connect_engine

    engine_sh = str(root / "scripts" / "engine.sh")
    pid_file = DEFAULT_ENGINE_DIR / "engine.pid"
    before = pid_file.read_text() if pid_file.exists() else None
    url = subprocess.run([engine_sh], capture_output=True, text=True, check=True).stdout
    started = pid_file.exists() and pid_file.read_text() != before
    engine = connect_engine(url.strip().splitlines()[-1].removeprefix("DOCKER_HOST="))
    try:
        yield engine
    finally:
        engine.close()
        if started:
            subprocess.run([engine_sh, "stop"], capture_output=True, check=False)


def write_result(path: Path, out: dict[str, Any]) -> None:
    """Write a benchmark's figures (plus the machine's CPU count and load) as JSON, and print them."""
    out = out | {"machine": {"cpus": os.cpu_count(), "load_1min_at_end": os.getloadavg()[0]}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2, default=str) + "\n")
    print(json.dumps(out, indent=2, default=str))
