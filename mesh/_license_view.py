"""The node's cached view of the license contract: which node addresses may publish and be
placed on (licensed, linked, status active); and of the oracle registry: the oracles, which may
take part in the mesh (watch it, publish) but are never placed on. Gossip validators are synchronous and run per
message, so they read this cache; a loop refreshes it from the chain every ``refresh_s``, so a
status change on chain takes effect within one refresh interval.

Chain calls are synchronous web3; ``ChainWorker`` runs them in a worker thread, one at a time
(eth-tester is not thread-safe, and one node's call rate is low), never on the event loop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import trio

from contracts import ChainError, LicenseRegistryClient, LicenseStatus, OracleRegistryClient

from ._trio_types import TaskStatus

log = logging.getLogger("deedmesh.licenses")
T = TypeVar("T")


class ChainWorker:
    """Runs blocking chain calls in a worker thread, serialized."""

    def __init__(self) -> None:
        self._lock = trio.Lock()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        async with self._lock:
            return await trio.to_thread.run_sync(fn, *args)


def fetch_oracles(oracles: OracleRegistryClient) -> frozenset[str]:
    """The registered oracles (blocking)."""
    return frozenset(oracles.oracles())


def fetch_eligible(licenses: LicenseRegistryClient) -> frozenset[str]:
    """Every node address linked to an active license (blocking): two batched trips at one block
    (``Chain.read_many``), every license's node, then the linked ones' status. Two web3 calls per
    license took an oracle process 75 % of its time with 100 licenses (bench_oracle, processes)."""
    chain = licenses.chain
    block = chain.block_number()
    ids = range(1, int(chain.read_many([licenses.last_license_id_call()], block)[0]) + 1)
    nodes = chain.read_many([licenses.node_of_call(i) for i in ids], block)
    linked = [(i, node) for i, node in zip(ids, nodes, strict=True) if node is not None]
    statuses = chain.read_many([licenses.status_call(i) for i, _ in linked], block)
    return frozenset(node for (_, node), status in zip(linked, statuses, strict=True)
                     if status is LicenseStatus.ACTIVE)


class LicenseView:
    """The cached eligible set, and the loop that refreshes it."""

    def __init__(self, fetch: Callable[[], frozenset[str]], worker: ChainWorker, refresh_s: float = 5.0,
                 block: Callable[[], int] | None = None,
                 fetch_oracles: Callable[[], frozenset[str]] | None = None) -> None:
        self._fetch = fetch
        self._fetch_oracles = fetch_oracles
        self._oracles: frozenset[str] = frozenset()
        self._worker = worker
        # the chain's latest block number: a view read at the same block needs no second pass over
        # every license (the contract's answers, expiry included, change only with a new block)
        self._block = block
        self._read_at: int | None = None
        self.refresh_s = refresh_s  # how long a chain-side ban may take to bite
        self._eligible: frozenset[str] = frozenset()
        self.refreshed = trio.Event()  # set (and replaced) after every successful refresh
        self.failures = 0
        self.on_change: list[Callable[[frozenset[str], frozenset[str]], None]] = []

    def is_eligible(self, address: str) -> bool:
        return address in self._eligible

    def is_oracle(self, address: str) -> bool:
        return address in self._oracles

    @property
    def eligible(self) -> frozenset[str]:
        return self._eligible

    async def refresh(self) -> None:
        """Fetch once; on a chain error keep the last good view and count the failure."""
        try:
            block = None if self._block is None else await self._worker.run(self._block)
            unchanged = block is not None and block == self._read_at
            fresh = self._eligible if unchanged else await self._worker.run(self._fetch)
            if self._fetch_oracles is not None and not unchanged:
                self._oracles = await self._worker.run(self._fetch_oracles)
            self._read_at = block
        except ChainError as exc:
            self.failures += 1
            log.warning("license refresh failed; keeping the last view", extra={"error": str(exc)})
            return
        old, self._eligible = self._eligible, fresh
        if fresh != old:
            for callback in self.on_change:
                callback(old, fresh)
        self.refreshed.set()
        self.refreshed = trio.Event()

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self.refresh()
        task_status.started()
        while True:
            await trio.sleep(self.refresh_s)
            await self.refresh()
