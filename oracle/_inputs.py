"""The chain inputs of an epoch report (``_report.ChainInputs``), read at one pinned block: every
job active on chain and started by the epoch (price, policy, and the replica count valid for that
epoch after any ``JobScaled``; ended ones too, until closed: every report carries their totals, the
escrow closes a job only on the newest) and the license and standing of every node the
observations name. A leader reads
them at the latest block and cites it; a follower reads the same block and compares, so both
judge the same facts. Blocking (web3): run it in a worker thread.
"""

from __future__ import annotations

from collections.abc import Iterable

from contracts import Chain, Deployment, JobStatus, LicenseStatus

from ._report import ChainInputs, JobInput, NodeInput, compute_replicas_at, standing_of


class InputsCache:
    """What a reader of chain inputs keeps between epochs (one per deployment and reader):

    - the escrow's epoch clock (immutable: read once);
    - its ``JobScaled`` events, each call reading only the blocks not read yet (a node that mines
      every second, or eth-tester, which scans logs in Python, makes a scan from the deployment
      block cost more with every epoch);
    - the jobs seen cancelled or closed, and at which block: those states are final, so a read at
      that block or later skips them, and each epoch reads the open jobs, not every job ever made;
    - its last reads, per (epoch, block): a read for nodes that one of them covered is taken from
      it (the state at a block does not change). An oracle reads its inputs as soon as it has
      observed an epoch (``Oracle.prefetch``), so when the leader cites the same block, which a
      chain that mines on demand or a slow one usually gives, neither the leader's build nor a
      follower's check waits on the chain.
    """

    KEPT_READS = 4

    def __init__(self, chain: Chain, deployment: Deployment) -> None:
        self._escrow = deployment.escrow(chain)
        self._read_to = deployment.block - 1
        self._rows: list[tuple[int, int, int, int, int]] = []  # (block, job, from epoch, previous, current)
        self._clock: tuple[int, int, int] | None = None
        self.ended: dict[int, int] = {}  # job id -> a block at which it was cancelled or closed
        self._reads: dict[tuple[int, int], tuple[frozenset[str], ChainInputs]] = {}  # (epoch, block) ->

    def recall(self, epoch: int, block: int, nodes: Iterable[str]) -> ChainInputs | None:
        """A kept read of ``epoch``'s inputs at ``block`` narrowed to ``nodes`` (lower-case), if one covered them."""
        kept = self._reads.get((epoch, block))
        wanted = set(nodes)
        if kept is None or not wanted <= kept[0]:
            return None
        return kept[1].model_copy(update={"nodes": tuple(n for n in kept[1].nodes if n.node in wanted)})

    def remember(self, epoch: int, block: int, nodes: Iterable[str], inputs: ChainInputs) -> None:
        self._reads[(epoch, block)] = (frozenset(nodes), inputs)
        while len(self._reads) > self.KEPT_READS:
            del self._reads[next(iter(self._reads))]

    def clock(self) -> tuple[int, int, int]:
        """(genesis, epoch seconds, close grace epochs) of the escrow."""
        if self._clock is None:
            self._clock = self._escrow.epoch_clock()
        return self._clock

    def scalings_at(self, block: int) -> dict[int, list[tuple[int, int, int]]]:
        """Job id -> its scalings (from epoch, previous, current) in blocks up to ``block``."""
        if block > self._read_to:
            for log in self._escrow.contract.events.JobScaled().get_logs(from_block=self._read_to + 1, to_block=block):
                args = log["args"]
                self._rows.append((int(log["blockNumber"]), int(args["jobId"]), int(args["fromEpoch"]),
                                   int(args["previous"]), int(args["current"])))
            self._read_to = block
        scalings: dict[int, list[tuple[int, int, int]]] = {}
        for at, job_id, from_epoch, previous, current in self._rows:
            if at <= block:
                scalings.setdefault(job_id, []).append((from_epoch, previous, current))
        return scalings

    def open_at(self, block: int, last_job: int) -> list[int]:
        """The job ids up to ``last_job`` not known to be cancelled or closed at ``block``."""
        return [j for j in range(1, last_job + 1) if self.ended.get(j, block + 1) > block]


def read_inputs(chain: Chain, deployment: Deployment, epoch: int, nodes: Iterable[str],
                block: int | None = None, cache: InputsCache | None = None) -> ChainInputs:
    """The inputs of ``epoch``'s report at ``block`` (default: the latest), for ``nodes``.
    ``cache``: the reader's ``InputsCache`` kept between calls (default: a new one)."""
    escrow, licenses = deployment.escrow(chain), deployment.licenses(chain)
    cache = cache or InputsCache(chain, deployment)
    if block is None:
        block = chain.block_number()
    ordered = sorted({n.lower() for n in nodes})
    if (kept := cache.recall(epoch, block, ordered)) is not None:
        return kept
    block_hash = "0x" + bytes(chain.w3.eth.get_block(block)["hash"]).hex()
    genesis, seconds, _ = cache.clock()
    start_ms, end_ms = (genesis + epoch * seconds) * 1000, (genesis + (epoch + 1) * seconds) * 1000
    scaled = cache.scalings_at(block)
    # two trips (Chain.read_many at the block): every open job and every node's license, then the
    # licenses' status; one call per view took ~2 s for 100 nodes and 50 jobs (BENCHMARKS.md)
    last_job = int(chain.read_many([escrow.last_job_id_call()], block)[0])
    job_ids = cache.open_at(block, last_job)
    first = chain.read_many([escrow.job_call(j) for j in job_ids]
                            + [licenses.license_of_node_call(n) for n in ordered], block)
    jobs_read, license_ids = first[:len(job_ids)], first[len(job_ids):]
    for job in jobs_read:
        if job.status in (JobStatus.CANCELLED, JobStatus.CLOSED):
            cache.ended[job.job_id] = min(block, cache.ended.get(job.job_id, block))
    owned = [(n, int(lic)) for n, lic in zip(ordered, license_ids, strict=True) if lic]
    statuses = chain.read_many([licenses.status_call(lic) for _, lic in owned], block)
    jobs = [JobInput.from_job(job, compute_replicas_at(epoch, job.replicas, scaled.get(job.job_id, ())))
            for job in jobs_read
            if job.status is JobStatus.ACTIVE and job.start_epoch <= epoch]
    found = [NodeInput(node=n, license_id=lic, standing=standing_of(LicenseStatus(status)))
             for (n, lic), status in zip(owned, statuses, strict=True)]
    inputs = ChainInputs(block=block, block_hash=block_hash, start_ms=start_ms, end_ms=end_ms, jobs=tuple(jobs),
                         nodes=tuple(found))
    cache.remember(epoch, block, ordered, inputs)
    return inputs

