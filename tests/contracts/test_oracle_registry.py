"""OracleRegistry: the oracle set, its threshold, and the t-of-n quorum check over a digest.

The world registers ``oracle_keys[0..3]`` with threshold 3. Signatures are made over raw 32-byte
digests with ``unsafe_sign_hash`` (the registry checks any digest; the EIP-712 domain belongs to the
consuming contract), plus one EIP-712 round trip through ``contracts.sign``/``contracts.digest``.
"""

from __future__ import annotations

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import keccak
from web3.types import TxReceipt

from contracts import OracleRegistryClient, digest, epoch_report, reverts, sign

from .world import World, args_of, events, key

ZERO = "0x0000000000000000000000000000000000000000"
GOVERNANCE_ROLE = keccak(text="GOVERNANCE_ROLE")
DEFAULT_ADMIN_ROLE = b"\x00" * 32
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
DIGEST = keccak(text="deedmesh oracle registry test digest")
OTHER_DIGEST = keccak(text="some other digest")


# ---------------------------------------------------------------------- helpers


def sig(account: LocalAccount, digest_: bytes = DIGEST) -> bytes:
    """A 65-byte (r, s, v) signature of a raw digest, low s, v in {27, 28}."""
    return bytes(account.unsafe_sign_hash(digest_).signature)


def high_s(signature: bytes) -> bytes:
    """The malleable twin of a signature: s' = n - s with v flipped (recovers to the same key)."""
    r, s, v = signature[:32], int.from_bytes(signature[32:64], "big"), signature[64]
    return r + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - v])


def recover(digest_: bytes, signature: bytes) -> str:
    return str(Account._recover_hash(digest_, signature=signature))


def state(world: World) -> tuple[list[str], int]:
    return world.oracles.oracles(), world.oracles.threshold()


def deploy_registry(world: World, oracles: list[str], threshold: int) -> tuple[OracleRegistryClient, TxReceipt]:
    contract, receipt = world.chain.deploy("OracleRegistry", world.admin, oracles, threshold, sender=world.admin)
    return OracleRegistryClient(world.chain, contract.address), receipt


def addresses(world: World) -> list[str]:
    return [k.address for k in world.oracle_keys]


# ---------------------------------------------------------------------- construction


def test_deployed_state(world: World) -> None:
    reg = world.oracles
    assert reg.oracles() == addresses(world)  # insertion order until something is removed
    assert reg.threshold() == 3
    for oracle in addresses(world):
        assert reg.is_oracle(oracle)
    for other in (world.outsider, world.admin, ZERO, key(300).address):
        assert not reg.is_oracle(other)
    assert reg.role("GOVERNANCE_ROLE") == GOVERNANCE_ROLE
    assert reg.has_role(GOVERNANCE_ROLE, world.admin)
    assert reg.has_role(DEFAULT_ADMIN_ROLE, world.admin)
    assert not reg.has_role(GOVERNANCE_ROLE, world.outsider)


def test_constructor_emits_roles_oracles_and_threshold(world: World) -> None:
    a, b = key(300).address, key(301).address
    reg, receipt = deploy_registry(world, [a, b], 2)
    assert events(reg, receipt) == [
        ("RoleGranted", {"role": DEFAULT_ADMIN_ROLE, "account": world.admin, "sender": world.admin}),
        ("RoleGranted", {"role": GOVERNANCE_ROLE, "account": world.admin, "sender": world.admin}),
        ("OracleAdded", {"oracle": a, "oracleCount": 1}),
        ("OracleAdded", {"oracle": b, "oracleCount": 2}),
        ("ThresholdChanged", {"previous": 0, "current": 2}),
    ]
    assert reg.oracles() == [a, b]
    assert reg.threshold() == 2


@pytest.mark.parametrize(
    ("oracles", "threshold", "error", "expected"),
    [
        ([], 1, "OracleRegistryInvalidThreshold", {"threshold": 1, "oracleCount": 0}),
        ([300, 301], 0, "OracleRegistryInvalidThreshold", {"threshold": 0, "oracleCount": 2}),
        ([300, 301], 3, "OracleRegistryInvalidThreshold", {"threshold": 3, "oracleCount": 2}),
        ([300, 301, 300], 2, "OracleRegistryAlreadyOracle", {"oracle": 300}),
        ([300, 0], 1, "OracleRegistryNotOracle", {"account": 0}),
    ],
    ids=["empty-set", "zero-threshold", "threshold-above-n", "duplicate", "zero-address"],
)
def test_constructor_rejects_bad_sets(world: World, oracles: list[int], threshold: int, error: str,
                                      expected: dict[str, int]) -> None:
    """Key numbers stand for addresses (0 = the zero address), so parametrize ids stay readable."""
    def addr(n: int) -> str:
        return ZERO if n == 0 else key(n).address
    with pytest.raises(getattr(reverts, error)) as err:
        deploy_registry(world, [addr(n) for n in oracles], threshold)
    assert args_of(err) == {k: addr(v) if k in ("oracle", "account") else v for k, v in expected.items()}


# ---------------------------------------------------------------------- addOracle


def test_add_oracle_appends_emits_and_can_sign(world: World) -> None:
    reg, new = world.oracles, key(300)
    receipt = reg.add_oracle(new.address, sender=world.admin)
    assert events(reg, receipt) == [("OracleAdded", {"oracle": new.address, "oracleCount": 5})]
    assert reg.oracles() == [*addresses(world), new.address]
    assert reg.is_oracle(new.address)
    assert reg.threshold() == 3  # adding does not move the threshold
    signers = [new, world.oracle_keys[0], world.oracle_keys[3]]
    assert reg.verify_quorum(DIGEST, [sig(k) for k in signers]) == 3


def test_add_existing_oracle_reverts(world: World) -> None:
    before = state(world)
    existing = world.oracle_keys[2].address
    with pytest.raises(reverts.OracleRegistryAlreadyOracle) as err:
        world.oracles.add_oracle(existing, sender=world.admin)
    assert args_of(err) == {"oracle": existing}
    assert state(world) == before


def test_add_zero_address_reverts_not_oracle(world: World) -> None:
    before = state(world)
    with pytest.raises(reverts.OracleRegistryNotOracle) as err:
        world.oracles.add_oracle(ZERO, sender=world.admin)
    assert args_of(err) == {"account": ZERO}
    assert state(world) == before


def test_full_set_rejects_another_oracle_and_uses_every_bitmap_bit(world: World) -> None:
    """256 oracles fill the set (the distinct-signer bitmap is 256 bits); oracle #256 sits on bit 255."""
    keys = [key(1000 + i) for i in range(256)]
    reg, _ = deploy_registry(world, [k.address for k in keys], 2)
    assert len(reg.oracles()) == 256
    with pytest.raises(reverts.OracleRegistryTooManyOracles) as err:
        reg.add_oracle(key(300).address, sender=world.admin)
    assert args_of(err) == {}
    assert not reg.is_oracle(key(300).address)
    first, last = keys[0], keys[255]
    assert reg.verify_quorum(DIGEST, [sig(first), sig(last)]) == 2
    with pytest.raises(reverts.OracleRegistryDuplicateSigner) as err:
        reg.verify_quorum(DIGEST, [sig(last), sig(first), sig(last)])
    assert args_of(err) == {"oracle": last.address}
    # after a removal there is room again
    reg.remove_oracle(keys[7].address, sender=world.admin)
    receipt = reg.add_oracle(key(300).address, sender=world.admin)
    assert events(reg, receipt) == [("OracleAdded", {"oracle": key(300).address, "oracleCount": 256})]


# ---------------------------------------------------------------------- removeOracle


def test_remove_oracle_swaps_last_into_place_and_keeps_signers_valid(world: World) -> None:
    reg = world.oracles
    k0, k1, k2, k3 = world.oracle_keys
    receipt = reg.remove_oracle(k0.address, sender=world.admin)
    assert events(reg, receipt) == [("OracleRemoved", {"oracle": k0.address, "oracleCount": 3})]
    assert reg.oracles() == [k3.address, k1.address, k2.address]  # swap-and-pop
    assert not reg.is_oracle(k0.address)
    for k in (k1, k2, k3):
        assert reg.is_oracle(k.address)
    assert reg.threshold() == 3
    assert reg.verify_quorum(DIGEST, [sig(k3), sig(k1), sig(k2)]) == 3
    with pytest.raises(reverts.OracleRegistryNotOracle) as err:
        reg.verify_quorum(DIGEST, [sig(k1), sig(k2), sig(k0)])
    assert args_of(err) == {"account": k0.address}
    # the moved oracle's position was updated: signing twice is still caught
    with pytest.raises(reverts.OracleRegistryDuplicateSigner) as err:
        reg.verify_quorum(DIGEST, [sig(k3), sig(k1), sig(k3)])
    assert args_of(err) == {"oracle": k3.address}


def test_remove_last_oracle_needs_no_swap(world: World) -> None:
    reg = world.oracles
    k0, k1, k2, k3 = world.oracle_keys
    receipt = reg.remove_oracle(k3.address, sender=world.admin)
    assert events(reg, receipt) == [("OracleRemoved", {"oracle": k3.address, "oracleCount": 3})]
    assert reg.oracles() == [k0.address, k1.address, k2.address]
    assert not reg.is_oracle(k3.address)
    assert reg.verify_quorum(DIGEST, [sig(k) for k in (k2, k0, k1)]) == 3


def test_removed_oracle_can_be_added_back(world: World) -> None:
    reg = world.oracles
    k0, k1, k2, k3 = world.oracle_keys
    reg.remove_oracle(k1.address, sender=world.admin)
    receipt = reg.add_oracle(k1.address, sender=world.admin)
    assert events(reg, receipt) == [("OracleAdded", {"oracle": k1.address, "oracleCount": 4})]
    assert reg.oracles() == [k0.address, k3.address, k2.address, k1.address]
    assert reg.verify_quorum(DIGEST, [sig(k) for k in (k1, k2, k3, k0)]) == 4


def test_remove_below_threshold_reverts(world: World) -> None:
    """With t = 3 the fourth oracle may go, a third may not: t must stay reachable."""
    reg = world.oracles
    reg.remove_oracle(world.oracle_keys[0].address, sender=world.admin)
    before = state(world)
    victim = world.oracle_keys[1].address
    with pytest.raises(reverts.OracleRegistryInvalidThreshold) as err:
        reg.remove_oracle(victim, sender=world.admin)
    assert args_of(err) == {"threshold": 3, "oracleCount": 2}
    assert state(world) == before
    assert reg.is_oracle(victim)
    # lowering the threshold first makes room
    reg.set_threshold(2, sender=world.admin)
    reg.remove_oracle(victim, sender=world.admin)
    assert len(reg.oracles()) == 2


def test_remove_down_to_one_oracle(world: World) -> None:
    reg = world.oracles
    reg.set_threshold(1, sender=world.admin)
    for k in world.oracle_keys[:3]:
        reg.remove_oracle(k.address, sender=world.admin)
    assert reg.oracles() == [world.oracle_keys[3].address]
    with pytest.raises(reverts.OracleRegistryInvalidThreshold) as err:
        reg.remove_oracle(world.oracle_keys[3].address, sender=world.admin)
    assert args_of(err) == {"threshold": 1, "oracleCount": 0}
    assert reg.verify_quorum(DIGEST, [sig(world.oracle_keys[3])]) == 1


@pytest.mark.parametrize("who", ["stranger", "zero"])
def test_remove_non_oracle_reverts(world: World, who: str) -> None:
    account = key(300).address if who == "stranger" else ZERO
    before = state(world)
    with pytest.raises(reverts.OracleRegistryNotOracle) as err:
        world.oracles.remove_oracle(account, sender=world.admin)
    assert args_of(err) == {"account": account}
    assert state(world) == before


def test_remove_twice_reverts(world: World) -> None:
    reg, k0 = world.oracles, world.oracle_keys[0]
    reg.remove_oracle(k0.address, sender=world.admin)
    with pytest.raises(reverts.OracleRegistryNotOracle) as err:
        reg.remove_oracle(k0.address, sender=world.admin)
    assert args_of(err) == {"account": k0.address}
    assert len(reg.oracles()) == 3


# ---------------------------------------------------------------------- setThreshold


def test_set_threshold_emits_previous_and_current(world: World) -> None:
    reg = world.oracles
    receipt = reg.set_threshold(4, sender=world.admin)
    assert events(reg, receipt) == [("ThresholdChanged", {"previous": 3, "current": 4})]
    assert reg.threshold() == 4
    receipt = reg.set_threshold(1, sender=world.admin)
    assert events(reg, receipt) == [("ThresholdChanged", {"previous": 4, "current": 1})]
    assert reg.threshold() == 1
    assert reg.verify_quorum(DIGEST, [sig(world.oracle_keys[2])]) == 1


def test_set_threshold_to_current_value_is_accepted(world: World) -> None:
    """Unlike LicenseRegistry.setStatus there is no "unchanged" error: a no-op change still emits."""
    receipt = world.oracles.set_threshold(3, sender=world.admin)
    assert events(world.oracles, receipt) == [("ThresholdChanged", {"previous": 3, "current": 3})]


@pytest.mark.parametrize("threshold", [0, 5, 255])
def test_set_threshold_out_of_range_reverts(world: World, threshold: int) -> None:
    before = state(world)
    with pytest.raises(reverts.OracleRegistryInvalidThreshold) as err:
        world.oracles.set_threshold(threshold, sender=world.admin)
    assert args_of(err) == {"threshold": threshold, "oracleCount": 4}
    assert state(world) == before


# ---------------------------------------------------------------------- governance


@pytest.mark.parametrize("who", ["outsider", "admin_without_governance"])
def test_governance_calls_need_governance_role_and_change_nothing(world: World, who: str) -> None:
    """DEFAULT_ADMIN_ROLE alone is not enough: every set change checks GOVERNANCE_ROLE."""
    reg = world.oracles
    sender = world.outsider if who == "outsider" else world.chain.accounts[8]
    if who == "admin_without_governance":
        reg.grant_role(DEFAULT_ADMIN_ROLE, sender, sender=world.admin)
    before = state(world)
    calls = {
        "addOracle": lambda: reg.add_oracle(key(300).address, sender=sender),
        "removeOracle": lambda: reg.remove_oracle(world.oracle_keys[0].address, sender=sender),
        "setThreshold": lambda: reg.set_threshold(2, sender=sender),
    }
    for name, call in calls.items():
        with pytest.raises(reverts.AccessControlUnauthorizedAccount) as err:
            call()
        assert args_of(err) == {"account": sender, "neededRole": GOVERNANCE_ROLE}, name
    assert state(world) == before
    assert not reg.is_oracle(key(300).address)


def test_revoked_governance_role_stops_set_changes(world: World) -> None:
    reg, gov = world.oracles, world.chain.accounts[8]
    reg.grant_role(GOVERNANCE_ROLE, gov, sender=world.admin)
    reg.set_threshold(2, sender=gov)
    world.chain.transact(reg.contract.functions.revokeRole(GOVERNANCE_ROLE, gov), world.admin)
    assert not reg.has_role(GOVERNANCE_ROLE, gov)
    with pytest.raises(reverts.AccessControlUnauthorizedAccount) as err:
        reg.set_threshold(3, sender=gov)
    assert args_of(err) == {"account": gov, "neededRole": GOVERNANCE_ROLE}
    assert reg.threshold() == 2


@pytest.mark.parametrize(
    ("interface_id", "supported"),
    [("7965db0b", True), ("01ffc9a7", True), ("80ac58cd", False), ("ffffffff", False)],
)
def test_supports_interface(world: World, interface_id: str, supported: bool) -> None:
    """AccessControl's ERC-165 answers: IAccessControl and ERC-165, nothing else."""
    reg = world.oracles
    assert reg.chain.call(reg.contract.functions.supportsInterface(bytes.fromhex(interface_id))) is supported


def test_granted_governance_role_may_change_the_set(world: World) -> None:
    reg, gov = world.oracles, world.chain.accounts[8]
    reg.grant_role(GOVERNANCE_ROLE, gov, sender=world.admin)
    reg.add_oracle(key(300).address, sender=gov)
    reg.remove_oracle(world.oracle_keys[0].address, sender=gov)
    reg.set_threshold(4, sender=gov)
    assert state(world) == ([key(300).address, *addresses(world)[1:]], 4)


# ---------------------------------------------------------------------- verifyQuorum


def test_exactly_threshold_signatures_return_threshold(world: World) -> None:
    k = world.oracle_keys
    assert world.oracles.verify_quorum(DIGEST, [sig(k[0]), sig(k[1]), sig(k[2])]) == 3
    assert world.oracles.verify_quorum(DIGEST, [sig(k[3]), sig(k[0]), sig(k[2])]) == 3  # any order, any subset


def test_more_than_threshold_signatures_return_count(world: World) -> None:
    assert world.oracles.verify_quorum(DIGEST, [sig(k) for k in reversed(world.oracle_keys)]) == 4


def test_eip712_digest_round_trip(world: World) -> None:
    """Signatures from ``contracts.sign`` verify against ``contracts.digest`` of the same message."""
    msg = epoch_report(world.escrow.domain(), 5, b"\x01" * 32, b"\x02" * 32)
    sigs = [sign(msg, k.key) for k in world.oracle_keys[:3]]
    assert world.oracles.verify_quorum(digest(msg), sigs) == 3
    with pytest.raises(reverts.OracleRegistryNotOracle):  # the same signatures mean nothing for another digest
        world.oracles.verify_quorum(DIGEST, sigs)


@pytest.mark.parametrize("count", [0, 1, 2])
def test_too_few_signatures_revert_quorum_not_reached(world: World, count: int) -> None:
    sigs = [sig(k) for k in world.oracle_keys[:count]]
    with pytest.raises(reverts.OracleRegistryQuorumNotReached) as err:
        world.oracles.verify_quorum(DIGEST, sigs)
    assert args_of(err) == {"signers": count, "threshold": 3}


def test_quorum_follows_the_current_threshold(world: World) -> None:
    reg, k = world.oracles, world.oracle_keys
    three = [sig(x) for x in k[:3]]
    reg.set_threshold(4, sender=world.admin)
    with pytest.raises(reverts.OracleRegistryQuorumNotReached) as err:
        reg.verify_quorum(DIGEST, three)
    assert args_of(err) == {"signers": 3, "threshold": 4}
    reg.set_threshold(2, sender=world.admin)
    assert reg.verify_quorum(DIGEST, three[:2]) == 2


@pytest.mark.parametrize("position", [0, 1, 3])
def test_duplicate_signer_reverts(world: World, position: int) -> None:
    """A repeated oracle is an error even when the distinct ones alone reach the threshold."""
    k = world.oracle_keys
    sigs = [sig(x) for x in k[:3]]
    sigs.insert(position, sig(k[1]))
    with pytest.raises(reverts.OracleRegistryDuplicateSigner) as err:
        world.oracles.verify_quorum(DIGEST, sigs)
    assert args_of(err) == {"oracle": k[1].address}


def test_non_oracle_signer_reverts(world: World) -> None:
    stranger = key(300)
    sigs = [sig(world.oracle_keys[0]), sig(stranger), sig(world.oracle_keys[1]), sig(world.oracle_keys[2])]
    with pytest.raises(reverts.OracleRegistryNotOracle) as err:
        world.oracles.verify_quorum(DIGEST, sigs)
    assert args_of(err) == {"account": stranger.address}


def test_signature_over_other_digest_recovers_to_a_stranger(world: World) -> None:
    """Such a signature is well formed, so it is reported as a non-oracle signer, not as invalid."""
    wrong = sig(world.oracle_keys[1], OTHER_DIGEST)
    recovered = recover(DIGEST, wrong)
    assert recovered != world.oracle_keys[1].address
    sigs = [sig(world.oracle_keys[0]), wrong, sig(world.oracle_keys[2])]
    with pytest.raises(reverts.OracleRegistryNotOracle) as err:
        world.oracles.verify_quorum(DIGEST, sigs)
    assert args_of(err) == {"account": recovered}


def _malformed(good: bytes, kind: str) -> bytes:
    r, s, v = good[:32], good[32:64], good[64]
    return {
        "empty": b"",
        "64-bytes": good[:64],  # ERC-2098 compact form is not accepted either
        "66-bytes": good + b"\x00",
        "high-s": high_s(good),
        "v-0-or-1": r + s + bytes([v - 27]),
        "v-29": r + s + bytes([29]),
        "zero-r": b"\x00" * 32 + s + bytes([v]),
    }[kind]


@pytest.mark.parametrize("kind", ["empty", "64-bytes", "66-bytes", "high-s", "v-0-or-1", "v-29", "zero-r"])
@pytest.mark.parametrize("index", [0, 2, 3])
def test_malformed_signature_reverts_with_its_index(world: World, kind: str, index: int) -> None:
    """A bad signature is reported even when the others already make a quorum."""
    k = world.oracle_keys
    sigs = [sig(x) for x in k]
    sigs[index] = _malformed(sigs[index], kind)
    with pytest.raises(reverts.OracleRegistryInvalidSignature) as err:
        world.oracles.verify_quorum(DIGEST, sigs)
    assert args_of(err) == {"index": index}


def test_high_s_twin_is_a_valid_signature_the_registry_rejects(world: World) -> None:
    """The twin recovers to the same oracle off chain: it is refused for malleability, not garbage."""
    oracle = world.oracle_keys[0]
    good = sig(oracle)
    twin = high_s(good)
    assert twin != good
    assert recover(DIGEST, twin) == oracle.address
    assert int.from_bytes(twin[32:64], "big") > SECP256K1_N // 2
    with pytest.raises(reverts.OracleRegistryInvalidSignature) as err:
        world.oracles.verify_quorum(DIGEST, [sig(world.oracle_keys[1]), twin, sig(world.oracle_keys[2])])
    assert args_of(err) == {"index": 1}


def test_first_error_wins(world: World) -> None:
    """Signatures are checked in order; the first failing one decides the error."""
    k = world.oracle_keys
    with pytest.raises(reverts.OracleRegistryNotOracle) as err:
        world.oracles.verify_quorum(DIGEST, [sig(key(300)), sig(k[0])[:64], sig(k[1]), sig(k[1])])
    assert args_of(err) == {"account": key(300).address}
    with pytest.raises(reverts.OracleRegistryInvalidSignature) as err:
        world.oracles.verify_quorum(DIGEST, [sig(k[0])[:64], sig(key(300)), sig(k[1]), sig(k[1])])
    assert args_of(err) == {"index": 0}
