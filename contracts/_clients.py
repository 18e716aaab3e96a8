"""Typed clients for the deployed contracts: one method per external function, Python values in
and out (units and enums from ``_types``), reverts raised by name through ``Chain``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from eth_abi import decode as abi_decode
from eth_abi import encode as abi_encode
from eth_utils import function_abi_to_4byte_selector
from eth_utils.abi import get_abi_input_types, get_abi_output_types
from web3.types import TxReceipt

from . import _eip712
from ._chain import Chain, ViewCall
from ._keccak import to_checksum_address
from ._types import (
    Claim,
    CspStatus,
    Epoch,
    Job,
    JobId,
    JobParams,
    JobStatus,
    JobTotals,
    LicenseId,
    LicenseStatus,
    SettlementPolicy,
    TokenUnits,
    TotalsProof,
)


@dataclass(frozen=True)
class Event:
    """One decoded log: the event's name, its arguments, and the emitting contract."""

    name: str
    args: dict[str, Any]
    address: str


class _Client:
    artifact = ""
    # (artifact, function) -> (selector, input types, output types): the same for every instance
    _abis: ClassVar[dict[tuple[str, str], tuple[bytes, list[str], list[str]]]] = {}

    def __init__(self, chain: Chain, address: str) -> None:
        self.chain = chain
        self.address = to_checksum_address(address)
        self.contract = chain.contract(self.artifact, self.address)

    def _tx(self, fn_name: str, *args: Any, sender: str) -> TxReceipt:
        return self.chain.transact(getattr(self.contract.functions, fn_name)(*args), sender)

    def _view(self, fn_name: str, *args: Any) -> Any:
        return self.chain.call(getattr(self.contract.functions, fn_name)(*args))

    def _read(self, fn_name: str, *args: Any, then: Callable[[Any], Any] = lambda value: value) -> Any:
        """A view that cannot revert, as a raw ``eth_call`` (``Chain.read_many``): ~1 ms of CPU
        against ~5 ms through web3's pipeline, for the views oracles and nodes poll."""
        return self._read_one(self._prepare(fn_name, *args, then=then))

    def _read_one(self, call: ViewCall) -> Any:
        """One prepared view, read now."""
        return self.chain.read_many([call])[0]

    def _prepare(self, fn_name: str, *args: Any, then: Callable[[Any], Any] = lambda value: value) -> ViewCall:
        """A view call for ``Chain.read_many``: its one return value (a struct as a tuple), then
        ``then`` applied. Addresses come back lower-case (eth_abi), not checksummed as from web3."""
        selector, inputs, outputs = self._abi_of(fn_name)
        if len(outputs) != 1:
            raise ValueError(f"{fn_name} returns {len(outputs)} values; prepared views return one")
        return ViewCall(fn_name, self.address, selector + abi_encode(inputs, args),
                        lambda raw: then(abi_decode(outputs, raw)[0]))

    def _abi_of(self, fn_name: str) -> tuple[bytes, list[str], list[str]]:
        found = self._abis.get((self.artifact, fn_name))
        if found is None:
            entries = [e for e in self.contract.abi if e.get("type") == "function" and e.get("name") == fn_name]
            if len(entries) != 1:
                raise ValueError(f"{self.artifact} has {len(entries)} functions named {fn_name}")
            entry = entries[0]
            found = self._abis[(self.artifact, fn_name)] = (
                function_abi_to_4byte_selector(entry), get_abi_input_types(entry), get_abi_output_types(entry))
        return found

    def events(self, receipt: TxReceipt) -> list[Event]:
        """Every log of ``receipt`` emitted by this contract, decoded, in order."""
        found: list[Event] = []
        for log in receipt["logs"]:
            if to_checksum_address(log["address"]) != self.address:
                continue
            for abi_event in self.contract.events:
                try:
                    decoded = abi_event().process_log(log)
                except Exception:  # not this event's signature
                    continue
                found.append(Event(decoded["event"], dict(decoded["args"]), self.address))
                break
        return found

    def logs(self, event_name: str, from_block: int = 0, to_block: int | str = "latest") -> list[Event]:
        """Every ``event_name`` log this contract emitted in the block range."""
        event = getattr(self.contract.events, event_name)
        return [Event(e["event"], dict(e["args"]), self.address)
                for e in event().get_logs(from_block=from_block, to_block=to_block)]

    def has_role(self, role: bytes, account: str) -> bool:
        return bool(self._view("hasRole", role, to_checksum_address(account)))

    def grant_role(self, role: bytes, account: str, *, sender: str) -> TxReceipt:
        return self._tx("grantRole", role, to_checksum_address(account), sender=sender)

    def role(self, name: str) -> bytes:
        """The bytes32 id of role ``name`` (e.g. ``"GOVERNANCE_ROLE"``)."""
        return bytes(self._view(name))


class TokenClient(_Client):
    """An ERC-20 (the mock stablecoin on dev chains, any token elsewhere)."""

    artifact = "MockStablecoin"

    def mint(self, to: str, amount: int, *, sender: str) -> TxReceipt:
        return self._tx("mint", to_checksum_address(to), amount, sender=sender)

    def approve(self, spender: str, amount: int, *, sender: str) -> TxReceipt:
        return self._tx("approve", to_checksum_address(spender), amount, sender=sender)

    def transfer(self, to: str, amount: int, *, sender: str) -> TxReceipt:
        return self._tx("transfer", to_checksum_address(to), amount, sender=sender)

    def balance_of(self, account: str) -> TokenUnits:
        return TokenUnits(self._view("balanceOf", to_checksum_address(account)))

    def decimals(self) -> int:
        return int(self._view("decimals"))


class LicenseRegistryClient(_Client):
    artifact = "LicenseRegistry"

    def mint(self, to: str, *, sender: str) -> LicenseId:
        receipt = self._tx("mint", to_checksum_address(to), sender=sender)
        minted = [e for e in self.events(receipt) if e.name == "LicenseMinted"]
        return LicenseId(minted[0].args["licenseId"])

    def link_node(self, license_id: int, node: str, *, sender: str) -> TxReceipt:
        return self._tx("linkNode", license_id, to_checksum_address(node), sender=sender)

    def unlink_node(self, license_id: int, *, sender: str) -> TxReceipt:
        return self._tx("unlinkNode", license_id, sender=sender)

    def set_status(self, license_id: int, status: LicenseStatus, *, sender: str) -> TxReceipt:
        return self._tx("setStatus", license_id, int(status), sender=sender)

    def set_relink_cooldown(self, seconds: int, *, sender: str) -> TxReceipt:
        return self._tx("setRelinkCooldown", seconds, sender=sender)

    def transfer(self, license_id: int, to: str, *, sender: str) -> TxReceipt:
        return self._tx("transferFrom", to_checksum_address(sender), to_checksum_address(to), license_id,
                        sender=sender)

    def owner_of(self, license_id: int) -> str:
        return str(self._view("ownerOf", license_id))

    def balance_of(self, owner: str) -> int:
        return int(self._view("balanceOf", to_checksum_address(owner)))

    def node_of(self, license_id: int) -> str | None:
        node = str(self._view("nodeOf", license_id))
        return None if int(node, 16) == 0 else node

    def license_of_node(self, node: str) -> LicenseId | None:
        license_id = int(self._view("licenseOfNode", to_checksum_address(node)))
        return LicenseId(license_id) if license_id else None

    def status_of(self, license_id: int) -> LicenseStatus:
        return LicenseStatus(self._view("statusOf", license_id))

    def node_of_call(self, license_id: int) -> ViewCall:
        """``node_of`` prepared for ``Chain.read_many`` (checksummed, None: no node linked)."""
        return self._prepare("nodeOf", license_id,
                             then=lambda node: None if int(node, 16) == 0 else to_checksum_address(node))

    def license_of_node_call(self, node: str) -> ViewCall:
        """``licenseOfNode`` prepared for ``Chain.read_many`` (0: none)."""
        return self._prepare("licenseOfNode", to_checksum_address(node), then=int)

    def status_call(self, license_id: int) -> ViewCall:
        """``statusOf`` prepared for ``Chain.read_many``."""
        return self._prepare("statusOf", license_id, then=LicenseStatus)

    def owner_and_status_of(self, license_id: int) -> tuple[str, LicenseStatus]:
        owner, status = self._view("ownerAndStatusOf", license_id)
        return str(owner), LicenseStatus(status)

    def relink_ready_at(self, license_id: int) -> int:
        return int(self._view("relinkReadyAt", license_id))

    def relink_cooldown(self) -> int:
        return int(self._view("relinkCooldown"))

    def is_node_banned(self, node: str) -> bool:
        return bool(self._view("isNodeBanned", to_checksum_address(node)))

    def is_node_eligible(self, node: str) -> bool:
        return bool(self._view("isNodeEligible", to_checksum_address(node)))

    def last_license_id(self) -> int:
        return int(self._view("lastLicenseId"))

    def last_license_id_call(self) -> ViewCall:
        return self._prepare("lastLicenseId", then=int)


class OracleRegistryClient(_Client):
    artifact = "OracleRegistry"

    def add_oracle(self, oracle: str, *, sender: str) -> TxReceipt:
        return self._tx("addOracle", to_checksum_address(oracle), sender=sender)

    def remove_oracle(self, oracle: str, *, sender: str) -> TxReceipt:
        return self._tx("removeOracle", to_checksum_address(oracle), sender=sender)

    def set_threshold(self, threshold: int, *, sender: str) -> TxReceipt:
        return self._tx("setThreshold", threshold, sender=sender)

    def verify_quorum(self, digest: bytes, signatures: Sequence[bytes]) -> int:
        return int(self._view("verifyQuorum", digest, list(signatures)))

    def is_oracle(self, account: str) -> bool:
        return bool(self._view("isOracle", to_checksum_address(account)))

    def oracles(self) -> list[str]:
        return [str(a) for a in self._view("oracles")]

    def threshold(self) -> int:
        return int(self._view("threshold"))


class JobEscrowClient(_Client):
    artifact = "JobEscrow"

    # -- CSPs and jobs
    def admit_csp(self, csp: str, kyc_ref: bytes, valid_until: int, nonce: int, signature: bytes, *,
                  sender: str) -> TxReceipt:
        return self._tx("admitCsp", to_checksum_address(csp), kyc_ref, valid_until, nonce, signature, sender=sender)

    def create_job(self, params: JobParams, *, sender: str) -> JobId:
        receipt = self._tx("createJob", params.as_abi(), sender=sender)
        created = [e for e in self.events(receipt) if e.name == "JobCreated"]
        return JobId(created[0].args["jobId"])

    def top_up(self, job_id: int, amount: int, *, sender: str) -> TxReceipt:
        return self._tx("topUp", job_id, amount, sender=sender)

    def update_spec(self, job_id: int, spec_hash: bytes, *, sender: str) -> TxReceipt:
        return self._tx("updateSpec", job_id, spec_hash, sender=sender)

    def scale_job(self, job_id: int, replicas: int, spec_hash: bytes, *, sender: str) -> TxReceipt:
        """Run ``replicas`` slots from the next epoch (or the start) to the end, with spec ``spec_hash``.
        A scale-up pulls tokens from ``sender`` (approve ``quote_scale``'s pull first)."""
        return self._tx("scaleJob", job_id, replicas, spec_hash, sender=sender)

    def quote_scale(self, job_id: int, replicas: int) -> tuple[TokenUnits, TokenUnits, Epoch]:
        """What ``scale_job`` would move now: (pulled from the CSP, refunded to it, first epoch at the new count)."""
        pull, refund, from_epoch = self._view("quoteScale", job_id, replicas)
        return TokenUnits(pull), TokenUnits(refund), Epoch(from_epoch)

    def cancel_job(self, job_id: int, *, sender: str) -> TxReceipt:
        return self._tx("cancelJob", job_id, sender=sender)

    def close_job(self, job_id: int, *, sender: str, totals: Sequence[TotalsProof] = ()) -> TxReceipt:
        """Close the job, applying ``totals`` first in the same transaction (the newest report's, which
        the escrow requires once a report covers the job)."""
        return self._with_totals(totals, "closeJob", job_id, sender=sender)

    # -- reports and payouts
    def submit_report(self, epoch: int, root: bytes, totals_root: bytes, signatures: Sequence[bytes], *,
                      sender: str) -> TxReceipt:
        return self._tx("submitReport", epoch, root, totals_root, list(signatures), sender=sender)

    def apply_totals(self, totals: Sequence[TotalsProof], *, sender: str) -> TxReceipt:
        return self._tx("applyTotals", [t.as_abi() for t in totals], sender=sender)

    def multicall(self, calls: Sequence[tuple[str, tuple[Any, ...]]], *, sender: str) -> TxReceipt:
        """Run ``(function, args)`` calls of this contract in one transaction, in order; the first
        revert reverts them all and is reported as itself (OpenZeppelin ``Multicall``)."""
        data = [bytes.fromhex(self.contract.encode_abi(name, args=list(args))[2:]) for name, args in calls]
        return self._tx("multicall", data, sender=sender)

    def _with_totals(self, totals: Sequence[TotalsProof], fn_name: str, *args: Any, sender: str) -> TxReceipt:
        if not totals:
            return self._tx(fn_name, *args, sender=sender)
        return self.multicall([("applyTotals", ([t.as_abi() for t in totals],)), (fn_name, args)], sender=sender)

    # Each payout may apply newer totals first, in the same transaction (``totals``).
    def claim(self, claims: Iterable[Claim], *, sender: str, totals: Sequence[TotalsProof] = ()) -> TxReceipt:
        return self._with_totals(totals, "claim", [c.as_abi() for c in claims], sender=sender)

    def forfeit(self, claims: Iterable[Claim], *, sender: str, totals: Sequence[TotalsProof] = ()) -> TxReceipt:
        return self._with_totals(totals, "forfeit", [c.as_abi() for c in claims], sender=sender)

    def take_refund(self, job_ids: Iterable[int], *, sender: str, totals: Sequence[TotalsProof] = ()) -> TxReceipt:
        return self._with_totals(totals, "takeRefund", list(job_ids), sender=sender)

    def execute_burn(self, job_ids: Iterable[int], *, sender: str, totals: Sequence[TotalsProof] = ()) -> TxReceipt:
        return self._with_totals(totals, "executeBurn", list(job_ids), sender=sender)

    # -- governance
    def set_attester(self, attester: str, *, sender: str) -> TxReceipt:
        return self._tx("setAttester", to_checksum_address(attester), sender=sender)

    def set_token_allowed(self, token: str, allowed: bool, *, sender: str) -> TxReceipt:
        return self._tx("setTokenAllowed", to_checksum_address(token), allowed, sender=sender)

    def set_csp_status(self, csp: str, status: CspStatus, *, sender: str) -> TxReceipt:
        return self._tx("setCspStatus", to_checksum_address(csp), int(status), sender=sender)

    # -- views
    def current_epoch(self) -> Epoch:
        return Epoch(self._read("currentEpoch"))

    def epoch_clock(self) -> tuple[int, int, int]:
        genesis, seconds, grace = self._view("epochClock")
        return int(genesis), int(seconds), int(grace)

    def next_epoch(self) -> Epoch:
        return Epoch(self._read("nextEpoch"))

    def root_of(self, epoch: int) -> bytes:
        return bytes(self._read("rootOf", epoch))

    def totals_root_of(self, epoch: int) -> bytes:
        return bytes(self._read("totalsRootOf", epoch))

    def settled_until(self, job_id: int) -> Epoch:
        """1 + the epoch whose totals were last applied to the job (0: none yet)."""
        return self._read_one(self.settled_until_call(job_id))  # type: ignore[no-any-return]

    def settled_until_call(self, job_id: int) -> ViewCall:
        return self._prepare("settledUntil", job_id, then=Epoch)

    def last_job_id(self) -> int:
        return int(self._view("lastJobId"))

    def last_job_id_call(self) -> ViewCall:
        return self._prepare("lastJobId", then=int)

    def get_job(self, job_id: int) -> Job:
        return self._read_one(self.job_call(job_id))  # type: ignore[no-any-return]

    def job_call(self, job_id: int) -> ViewCall:
        """``get_job`` prepared for ``Chain.read_many`` (many jobs and CSPs in one trip)."""
        return self._prepare("getJob", job_id, then=lambda raw: _job_of(job_id, raw))

    def admitted_until_call(self, csp: str) -> ViewCall:
        return self._prepare("admittedUntil", to_checksum_address(csp), then=int)

    def csp_status_call(self, csp: str) -> ViewCall:
        return self._prepare("cspStatus", to_checksum_address(csp), then=CspStatus)

    def claimed_of(self, job_id: int, license_id: int) -> TokenUnits:
        return TokenUnits(self._view("claimedOf", job_id, license_id))

    def is_csp_admitted(self, csp: str) -> bool:
        return bool(self._view("isCspAdmitted", to_checksum_address(csp)))

    def admitted_until(self, csp: str) -> int:
        return self._read_one(self.admitted_until_call(csp))  # type: ignore[no-any-return]

    def csp_status(self, csp: str) -> CspStatus:
        return self._read_one(self.csp_status_call(csp))  # type: ignore[no-any-return]

    def is_token_allowed(self, token: str) -> bool:
        return bool(self._view("isTokenAllowed", to_checksum_address(token)))

    def attester(self) -> str:
        return str(self._view("attester"))

    def registries(self) -> tuple[str, str]:
        licenses, oracles = self._view("registries")
        return str(licenses), str(oracles)

    # -- signed formats, computed by the contract (the vectors compare these with ``_eip712``)
    def domain(self) -> dict[str, Any]:
        return _eip712.escrow_domain(self.chain.chain_id, self.address)

    def totals_leaf(self, totals: JobTotals) -> bytes:
        return bytes(self._view("totalsLeaf", totals.job_id, totals.release, totals.refund, totals.burn))

    def release_leaf(self, job_id: int, license_id: int, cumulative: int) -> bytes:
        return bytes(self._view("releaseLeaf", job_id, license_id, cumulative))

    def epoch_report_digest(self, epoch: int, root: bytes, totals_root: bytes) -> bytes:
        return bytes(self._view("epochReportDigest", epoch, root, totals_root))

    def csp_admission_digest(self, csp: str, kyc_ref: bytes, valid_until: int, nonce: int) -> bytes:
        return bytes(self._view("cspAdmissionDigest", to_checksum_address(csp), kyc_ref, valid_until, nonce))

    def job_submission_digest(self, job_id: int, spec_hash: bytes, nonce: int, expiry: int) -> bytes:
        return bytes(self._view("jobSubmissionDigest", job_id, spec_hash, nonce, expiry))


def _job_of(job_id: int, raw: tuple[Any, ...]) -> Job:
    (csp, start, replicas, token, epochs, status, threshold, floor, bps, spec, price, deposited,
     alloc_release, release_spent, alloc_refund, refunded, alloc_burn, burned, reclaimed, forfeited) = raw
    return Job(
        job_id=JobId(job_id), csp=to_checksum_address(csp), start_epoch=Epoch(start), replicas=replicas,
        token=to_checksum_address(token), epochs=epochs, status=JobStatus(status),
        policy=SettlementPolicy(release_threshold=threshold, burn_floor=floor, protocol_burn_bps=bps),
        spec_hash=bytes(spec), price_per_node_epoch=TokenUnits(price), deposited=TokenUnits(deposited),
        alloc_release=TokenUnits(alloc_release), release_spent=TokenUnits(release_spent),
        alloc_refund=TokenUnits(alloc_refund), refunded=TokenUnits(refunded), alloc_burn=TokenUnits(alloc_burn),
        burned=TokenUnits(burned), reclaimed=TokenUnits(reclaimed), forfeited=TokenUnits(forfeited),
    )
