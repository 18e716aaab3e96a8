"""A deployed contract set with actors, and helpers that drive it like the system would."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3.types import TxReceipt

from contracts import (
    Chain,
    Claim,
    DeployConfig,
    Deployment,
    Epoch,
    JobEscrowClient,
    JobId,
    JobParams,
    JobTotals,
    LicenseRegistryClient,
    MerkleTree,
    OracleRegistryClient,
    SettlementPolicy,
    TokenClient,
    TokenUnits,
    csp_admission,
    deploy,
    epoch_report,
    release_leaf,
    sign,
    totals_proofs,
    totals_root,
)

EPOCH_SECONDS = 86_400  # a day: wall-clock drift during a test never crosses an epoch boundary
GRACE_EPOCHS = 2
COOLDOWN_S = 3_600
PRICE = TokenUnits(1_000_000)  # 1 mUSD per node-epoch
CSP_FUNDS = TokenUnits(10**12)


def key(n: int) -> LocalAccount:
    """A deterministic test key (never a real one)."""
    return Account.from_key((0xD33D << 16 | n).to_bytes(32, "big"))


@dataclass
class World:
    chain: Chain
    dep: Deployment
    licenses: LicenseRegistryClient
    oracles: OracleRegistryClient
    escrow: JobEscrowClient
    token: TokenClient
    admin: str
    csp: str
    csp2: str
    outsider: str
    owners: list[str]
    license_ids: list[int]
    nodes: list[LocalAccount]
    oracle_keys: list[LocalAccount]
    attester: LocalAccount
    admission_nonce: list[int] = field(default_factory=lambda: [100])

    # ------------------------------------------------------------------ actors

    def admission(self, csp: str, *, valid_for_s: int = 10**6, nonce: int | None = None,
                  signer: LocalAccount | None = None, kyc_ref: bytes = b"\x11" * 32) -> tuple[int, int, bytes]:
        """An attester signature admitting ``csp``: (valid_until, nonce, signature)."""
        if nonce is None:
            self.admission_nonce[0] += 1
            nonce = self.admission_nonce[0]
        valid_until = self.chain.now() + valid_for_s
        msg = csp_admission(self.escrow.domain(), csp, kyc_ref, valid_until, nonce)
        return valid_until, nonce, sign(msg, (signer or self.attester).key)

    def admit(self, csp: str) -> None:
        valid_until, nonce, sig = self.admission(csp)
        self.escrow.admit_csp(csp, b"\x11" * 32, valid_until, nonce, sig, sender=csp)

    def params(self, *, replicas: int = 2, epochs: int = 3, price: int = PRICE, start_epoch: int | None = None,
               policy: SettlementPolicy | None = None, token: str | None = None,
               spec: bytes = b"\x5e" * 32) -> JobParams:
        start = self.escrow.current_epoch() + 1 if start_epoch is None else start_epoch
        return JobParams(spec_hash=spec, token=token or self.token.address, replicas=replicas, epochs=epochs,
                         start_epoch=Epoch(start), price_per_node_epoch=TokenUnits(price),
                         policy=policy or SettlementPolicy(release_threshold=200, burn_floor=50,
                                                           protocol_burn_bps=100))

    def new_job(self, *, csp: str | None = None, **kw: object) -> JobId:
        csp = csp or self.csp
        params = self.params(**kw)  # type: ignore[arg-type]
        self.token.approve(self.escrow.address, params.deposit, sender=csp)
        return self.escrow.create_job(params, sender=csp)

    # ------------------------------------------------------------------ time

    def advance_epochs(self, n: int = 1) -> Epoch:
        """Move the chain clock ``n`` epochs ahead; returns the new current epoch."""
        self.chain.advance_time(n * EPOCH_SECONDS)
        return self.escrow.current_epoch()

    def advance_to_epoch(self, epoch: int) -> None:
        genesis, seconds, _ = self.escrow.epoch_clock()
        target = genesis + epoch * seconds + 1
        if self.chain.now() < target:
            self.chain.advance_time(target - self.chain.now())

    # ------------------------------------------------------------------ reports and claims

    def signed_report(self, epoch: int, pay: Mapping[tuple[int, int], int], totals: Sequence[JobTotals], *,
                      signers: Iterable[LocalAccount] | None = None, domain: dict[str, object] | None = None,
                      ) -> tuple[MerkleTree, bytes, list[bytes]]:
        """Build the tree of ``pay[(job, license)] = cumulative`` and sign the report: (tree, root, sigs)."""
        leaves = [release_leaf(j, lic, amount) for (j, lic), amount in pay.items()] or [b"\x00" * 32]
        tree = MerkleTree(leaves)
        msg = epoch_report(domain or self.escrow.domain(), epoch, tree.root, totals_root(totals))
        chosen = list(signers) if signers is not None else self.oracle_keys[: self.oracles.threshold()]
        sigs = [sign(msg, k.key) for k in sorted(chosen, key=lambda k: k.address)]
        return tree, tree.root, sigs

    def post_report(self, epoch: int, pay: Mapping[tuple[int, int], int], totals: Sequence[JobTotals], *,
                    apply: bool = True, **kw: object) -> MerkleTree:
        """Sign and submit the report; with ``apply``, apply every job's totals right after (one
        more transaction), as claims, refunds and burns would before paying."""
        tree, root, sigs = self.signed_report(epoch, pay, totals, **kw)  # type: ignore[arg-type]
        self.escrow.submit_report(epoch, root, totals_root(totals), sigs, sender=self.outsider)
        if apply and totals:
            self.apply(epoch, totals)
        return tree

    def apply(self, epoch: int, totals: Sequence[JobTotals], job_ids: Sequence[int] | None = None) -> TxReceipt:
        """Apply the totals of ``job_ids`` (default: all) of the report of ``epoch`` (whose totals
        were ``totals``), sent by the outsider: anyone may."""
        return self.escrow.apply_totals(totals_proofs(epoch, totals, job_ids), sender=self.outsider)

    @staticmethod
    def claim_of(tree: MerkleTree, epoch: int, job: int, license_id: int, cumulative: int) -> Claim:
        leaf = release_leaf(job, license_id, cumulative)
        return Claim(JobId(job), license_id, Epoch(epoch), TokenUnits(cumulative), tree.proof(leaf))  # type: ignore[arg-type]

    # ------------------------------------------------------------------ invariants

    def assert_conserved(self, job_ids: Iterable[int] | None = None) -> None:
        """Per job: deposited = released + refunded + burned + locked; the escrow's token balance
        equals what it still holds for every job paid in that token."""
        ids = list(job_ids) if job_ids is not None else list(range(1, self.escrow.last_job_id() + 1))
        held = 0
        for job_id in ids:
            job = self.escrow.get_job(job_id)
            c = job.conservation()
            assert c["deposited"] == c["released"] + c["refunded"] + c["burned"] + c["locked"], (job_id, c)
            assert min(c.values()) >= 0, (job_id, c)
            assert job.release_spent <= job.alloc_release, job
            assert job.refunded <= job.alloc_refund, job
            assert job.burned <= job.alloc_burn, job
            if job.token == self.token.address:
                held += job.held
        if job_ids is None:
            assert self.token.balance_of(self.escrow.address) == held


def build_world(chain: Chain) -> World:
    """Deploy a fresh contract set on ``chain`` with licensed, linked nodes and an admitted CSP."""
    accounts = chain.accounts
    admin, csp, csp2, outsider = accounts[0], accounts[1], accounts[7], accounts[9]
    owners = accounts[2:7]
    oracle_keys = [key(100 + i) for i in range(4)]
    attester = key(200)
    nodes = [key(i) for i in range(len(owners))]
    config = DeployConfig(epoch_seconds=EPOCH_SECONDS, close_grace_epochs=GRACE_EPOCHS,
                          relink_cooldown_s=COOLDOWN_S, oracle_threshold=3, mock_token=True)
    dep = deploy(chain, config, admin=admin, oracles=[k.address for k in oracle_keys], attester=attester.address)
    world = World(chain=chain, dep=dep, licenses=dep.licenses(chain), oracles=dep.oracles(chain),
                  escrow=dep.escrow(chain), token=dep.payment_token(chain), admin=admin, csp=csp, csp2=csp2,
                  outsider=outsider, owners=owners, license_ids=[], nodes=nodes, oracle_keys=oracle_keys,
                  attester=attester)
    for owner, node in zip(owners, nodes, strict=True):
        license_id = world.licenses.mint(owner, sender=admin)
        world.licenses.link_node(license_id, node.address, sender=owner)
        world.license_ids.append(license_id)
    for c in (csp, csp2):
        world.licenses.mint(c, sender=admin)  # the deed requirement
        world.token.mint(c, CSP_FUNDS, sender=admin)
    world.admit(csp)
    return world


def events(client: Any, receipt: Any) -> list[tuple[str, dict[str, Any]]]:
    """(name, args) of every event ``client``'s contract emitted in ``receipt``."""
    return [(e.name, e.args) for e in client.events(receipt)]


def args_of(err: Any) -> dict[str, Any]:
    """A revert's arguments by name (addresses come back checksummed from the decoder)."""
    values = err.value.args_by_name
    assert tuple(values.values()) == err.value.values  # the two views of the arguments agree
    return dict(values)
