"""LicenseRegistry: minting, node links and the relink cooldown, governance statuses, transfers.

The world holds licenses 1-5 owned by ``owners[i]`` and linked to ``nodes[i]``, and licenses 6 and 7
owned (unlinked) by the two CSPs. Errors and events are checked by name and by every argument.
"""

from __future__ import annotations

from typing import Any

import pytest
from eth_utils import keccak
from web3.types import TxReceipt

from contracts import LicenseRegistryClient, LicenseStatus, reverts

from .world import COOLDOWN_S, World, args_of, events, key

ZERO = "0x0000000000000000000000000000000000000000"
DEFAULT_ADMIN_ROLE = b"\x00" * 32
MINTER_ROLE = keccak(text="MINTER_ROLE")
GOVERNANCE_ROLE = keccak(text="GOVERNANCE_ROLE")
CSP_LICENSE = 6  # owned by world.csp, no node linked
NOT_BLACKLISTED = [LicenseStatus.ACTIVE, LicenseStatus.FROZEN, LicenseStatus.SUSPENDED]


# ---------------------------------------------------------------------- helpers


def tx(client: LicenseRegistryClient, fn: str, *args: Any, sender: str) -> TxReceipt:
    """Send any contract function (the client wraps only some of them, and hides mint's receipt)."""
    return client.chain.transact(getattr(client.contract.functions, fn)(*args), sender)


def view(client: LicenseRegistryClient, fn: str, *args: Any) -> Any:
    return client.chain.call(getattr(client.contract.functions, fn)(*args))


class AtBlock:
    """A contract call pinned to a mined block, so ``Chain.call`` simulates it with that block's
    timestamp (a plain preflight uses the backend's idea of "now", which is not exact on anvil)."""

    def __init__(self, fn: Any, block: int) -> None:
        self.fn, self.block = fn, block

    def call(self, params: dict[str, Any]) -> Any:
        return self.fn.call(params, block_identifier=self.block)


def block_time(world: World, receipt: TxReceipt) -> int:
    return int(world.chain.w3.eth.get_block(receipt["blockNumber"])["timestamp"])


def license_state(world: World, license_id: int) -> tuple[Any, ...]:
    """Everything the registry stores about one license, for "nothing changed" checks."""
    lic = world.licenses
    node = lic.node_of(license_id)
    return (lic.owner_and_status_of(license_id), node, lic.license_of_node(node) if node else None,
            lic.relink_ready_at(license_id), lic.is_node_banned(node) if node else None)


def registry_state(world: World, ids: tuple[int, ...] = (1, CSP_LICENSE)) -> tuple[Any, ...]:
    """The registry-wide values plus the licenses the tests here touch (1 and the CSP's)."""
    lic = world.licenses
    return (lic.last_license_id(), lic.relink_cooldown(), tuple(license_state(world, i) for i in ids))


def unlink_and_ready_at(world: World, license_id: int, owner: str) -> int:
    """Unlink the license's node; returns its relinkReadyAt."""
    world.licenses.unlink_node(license_id, sender=owner)
    return world.licenses.relink_ready_at(license_id)


# ---------------------------------------------------------------------- deployment and roles


def test_world_state_as_built(world: World) -> None:
    """Every view agrees with what build_world did: ids 1..7, five linked nodes, all active."""
    lic = world.licenses
    assert lic.last_license_id() == 7
    assert lic.relink_cooldown() == COOLDOWN_S
    for license_id, owner, node in zip(world.license_ids, world.owners, world.nodes, strict=True):
        assert lic.owner_of(license_id) == owner
        assert lic.owner_and_status_of(license_id) == (owner, LicenseStatus.ACTIVE)
        assert lic.status_of(license_id) == LicenseStatus.ACTIVE
        assert lic.node_of(license_id) == node.address
        assert lic.license_of_node(node.address) == license_id
        assert lic.relink_ready_at(license_id) == 0
        assert lic.is_node_eligible(node.address)
        assert not lic.is_node_banned(node.address)
    assert world.license_ids == [1, 2, 3, 4, 5]
    assert lic.owner_of(CSP_LICENSE) == world.csp
    assert lic.owner_of(7) == world.csp2
    assert lic.node_of(CSP_LICENSE) is None
    assert lic.balance_of(world.owners[0]) == 1


def test_role_constants_and_admin_roles(world: World) -> None:
    lic = world.licenses
    assert lic.role("MINTER_ROLE") == MINTER_ROLE
    assert lic.role("GOVERNANCE_ROLE") == GOVERNANCE_ROLE
    for role in (DEFAULT_ADMIN_ROLE, MINTER_ROLE, GOVERNANCE_ROLE):
        assert lic.has_role(role, world.admin)
        assert not lic.has_role(role, world.outsider)


def test_constructor_grants_roles_to_admin_argument_and_emits_cooldown(world: World) -> None:
    """The roles go to the ``admin`` argument, not to whoever sent the deployment."""
    new_admin = world.chain.accounts[8]
    contract, receipt = world.chain.deploy("LicenseRegistry", new_admin, 7, sender=world.admin)
    fresh = LicenseRegistryClient(world.chain, contract.address)
    assert events(fresh, receipt) == [
        *(("RoleGranted", {"role": role, "account": new_admin, "sender": world.admin})
          for role in (DEFAULT_ADMIN_ROLE, MINTER_ROLE, GOVERNANCE_ROLE)),
        ("RelinkCooldownChanged", {"previous": 0, "current": 7}),
    ]
    assert fresh.relink_cooldown() == 7
    assert fresh.last_license_id() == 0
    for role in (DEFAULT_ADMIN_ROLE, MINTER_ROLE, GOVERNANCE_ROLE):
        assert fresh.has_role(role, new_admin)
        assert not fresh.has_role(role, world.admin)
    assert view(fresh, "name") == "deedmesh node license"
    assert view(fresh, "symbol") == "DEED"


@pytest.mark.parametrize(
    ("interface_id", "supported"),
    [
        ("80ac58cd", True),  # ERC-721
        ("7965db0b", True),  # IAccessControl
        ("01ffc9a7", True),  # ERC-165
        ("5b5e139f", True),  # ERC-721 metadata
        ("ffffffff", False),  # ERC-165 says this id is never supported
        ("780e9d63", False),  # ERC-721 enumerable: not implemented
    ],
)
def test_supports_interface(world: World, interface_id: str, supported: bool) -> None:
    assert view(world.licenses, "supportsInterface", bytes.fromhex(interface_id)) is supported


def test_inherited_erc721_and_access_control_views(world: World) -> None:
    """The OpenZeppelin surface the registry exposes unchanged: approvals, metadata, role admin."""
    lic, owner, other = world.licenses, world.owners[0], world.chain.accounts[8]
    assert view(lic, "getApproved", 1) == ZERO
    tx(lic, "approve", other, 1, sender=owner)
    assert view(lic, "getApproved", 1) == other
    assert not view(lic, "isApprovedForAll", owner, other)
    tx(lic, "setApprovalForAll", other, True, sender=owner)
    assert view(lic, "isApprovedForAll", owner, other)
    assert view(lic, "tokenURI", 1) == ""  # no base URI
    with pytest.raises(reverts.ERC721NonexistentToken) as err:
        view(lic, "tokenURI", 8)
    assert args_of(err) == {"tokenId": 8}
    with pytest.raises(reverts.ERC721NonexistentToken) as err:
        lic.owner_of(8)
    assert args_of(err) == {"tokenId": 8}
    for role in (MINTER_ROLE, GOVERNANCE_ROLE, DEFAULT_ADMIN_ROLE):
        assert bytes(view(lic, "getRoleAdmin", role)) == DEFAULT_ADMIN_ROLE
    assert bytes(view(lic, "DEFAULT_ADMIN_ROLE")) == DEFAULT_ADMIN_ROLE


def test_renounced_governance_role_stops_status_changes(world: World) -> None:
    lic = world.licenses
    tx(lic, "renounceRole", GOVERNANCE_ROLE, world.admin, sender=world.admin)
    assert not lic.has_role(GOVERNANCE_ROLE, world.admin)
    with pytest.raises(reverts.AccessControlUnauthorizedAccount) as err:
        lic.set_status(1, LicenseStatus.FROZEN, sender=world.admin)
    assert args_of(err) == {"account": world.admin, "neededRole": GOVERNANCE_ROLE}
    assert lic.status_of(1) == LicenseStatus.ACTIVE


# ---------------------------------------------------------------------- mint


def test_mint_assigns_next_id_and_emits_transfer_then_minted(world: World) -> None:
    lic, buyer = world.licenses, world.outsider
    for expected_id in (8, 9):
        receipt = tx(lic, "mint", buyer, sender=world.admin)
        assert events(lic, receipt) == [
            ("Transfer", {"from": ZERO, "to": buyer, "tokenId": expected_id}),
            ("LicenseMinted", {"licenseId": expected_id, "owner": buyer}),
        ]
        assert all(e.address == lic.address for e in lic.events(receipt))
        assert lic.owner_and_status_of(expected_id) == (buyer, LicenseStatus.ACTIVE)
        assert lic.node_of(expected_id) is None
        assert lic.relink_ready_at(expected_id) == 0  # a new license may link at once
    assert lic.last_license_id() == 9
    assert lic.balance_of(buyer) == 2


def test_mint_client_returns_the_new_id(world: World) -> None:
    assert world.licenses.mint(world.outsider, sender=world.admin) == 8
    assert world.licenses.owner_of(8) == world.outsider


@pytest.mark.parametrize("who", ["outsider", "license_owner", "governance_only"])
def test_mint_without_minter_role_reverts_and_changes_nothing(world: World, who: str) -> None:
    lic = world.licenses
    sender = {"outsider": world.outsider, "license_owner": world.owners[0],
              "governance_only": world.chain.accounts[8]}[who]
    if who == "governance_only":  # governance over statuses does not imply minting
        lic.grant_role(GOVERNANCE_ROLE, sender, sender=world.admin)
    before = registry_state(world)
    with pytest.raises(reverts.AccessControlUnauthorizedAccount) as err:
        lic.mint(sender, sender=sender)
    assert args_of(err) == {"account": sender, "neededRole": MINTER_ROLE}
    assert registry_state(world) == before
    assert lic.balance_of(sender) == (1 if who == "license_owner" else 0)


def test_granted_and_revoked_minter_role(world: World) -> None:
    """MINTER_ROLE is what mint checks: granting it enables minting, revoking it disables it."""
    lic, sale = world.licenses, world.chain.accounts[8]
    lic.grant_role(MINTER_ROLE, sale, sender=world.admin)
    assert lic.mint(world.outsider, sender=sale) == 8
    tx(lic, "revokeRole", MINTER_ROLE, sale, sender=world.admin)
    with pytest.raises(reverts.AccessControlUnauthorizedAccount) as err:
        lic.mint(world.outsider, sender=sale)
    assert args_of(err) == {"account": sale, "neededRole": MINTER_ROLE}
    assert lic.last_license_id() == 8


def test_mint_to_zero_address_reverts(world: World) -> None:
    with pytest.raises(reverts.ERC721InvalidReceiver) as err:
        tx(world.licenses, "mint", ZERO, sender=world.admin)
    assert args_of(err) == {"receiver": ZERO}
    assert world.licenses.last_license_id() == 7


def test_mint_to_contract_without_receiver_hook_reverts(world: World) -> None:
    """mint uses _safeMint: a contract that cannot handle ERC-721 tokens is refused."""
    target = world.oracles.address
    with pytest.raises(reverts.ERC721InvalidReceiver) as err:
        world.licenses.mint(target, sender=world.admin)
    assert args_of(err) == {"receiver": target}
    assert world.licenses.last_license_id() == 7
    assert world.licenses.balance_of(target) == 0


# ---------------------------------------------------------------------- linkNode


def test_link_node_links_both_ways_and_emits(world: World) -> None:
    lic, node = world.licenses, key(50).address
    assert not lic.is_node_eligible(node)
    receipt = lic.link_node(CSP_LICENSE, node, sender=world.csp)
    assert events(lic, receipt) == [("NodeLinked", {"licenseId": CSP_LICENSE, "node": node})]
    assert lic.node_of(CSP_LICENSE) == node
    assert lic.license_of_node(node) == CSP_LICENSE
    assert lic.is_node_eligible(node)


@pytest.mark.parametrize("who", ["outsider", "admin", "other_license_owner"])
def test_link_node_by_non_owner_reverts(world: World, who: str) -> None:
    """Not even the admin may link a node to someone else's license."""
    sender = {"outsider": world.outsider, "admin": world.admin, "other_license_owner": world.owners[1]}[who]
    before = registry_state(world)
    with pytest.raises(reverts.LicenseRegistryNotLicenseOwner) as err:
        world.licenses.link_node(CSP_LICENSE, key(50).address, sender=sender)
    assert args_of(err) == {"licenseId": CSP_LICENSE, "caller": sender}
    assert registry_state(world) == before


@pytest.mark.parametrize("license_id", [0, 8, 2**256 - 1])
def test_link_node_unknown_license_reverts(world: World, license_id: int) -> None:
    with pytest.raises(reverts.LicenseRegistryUnknownLicense) as err:
        world.licenses.link_node(license_id, key(50).address, sender=world.csp)
    assert args_of(err) == {"licenseId": license_id}
    assert world.licenses.license_of_node(key(50).address) is None


def test_link_zero_node_reverts(world: World) -> None:
    with pytest.raises(reverts.LicenseRegistryZeroNode) as err:
        world.licenses.link_node(CSP_LICENSE, ZERO, sender=world.csp)
    assert args_of(err) == {}
    assert world.licenses.node_of(CSP_LICENSE) is None


@pytest.mark.parametrize("same_node", [False, True])
def test_link_node_to_linked_license_reverts(world: World, same_node: bool) -> None:
    """A license holds one node; relinking even the same node is refused (unlink first)."""
    node = world.nodes[0].address if same_node else key(50).address
    with pytest.raises(reverts.LicenseRegistryLicenseAlreadyLinked) as err:
        world.licenses.link_node(1, node, sender=world.owners[0])
    assert args_of(err) == {"licenseId": 1, "node": world.nodes[0].address}
    assert world.licenses.node_of(1) == world.nodes[0].address
    assert world.licenses.license_of_node(key(50).address) is None


def test_link_node_linked_elsewhere_reverts(world: World) -> None:
    node = world.nodes[2].address
    with pytest.raises(reverts.LicenseRegistryNodeAlreadyLinked) as err:
        world.licenses.link_node(CSP_LICENSE, node, sender=world.csp)
    assert args_of(err) == {"node": node, "licenseId": 3}
    assert world.licenses.license_of_node(node) == 3
    assert world.licenses.node_of(CSP_LICENSE) is None


def test_link_banned_node_reverts_even_after_unlink(world: World) -> None:
    """The ban is on the node address: unlinking it from the blacklisted license does not lift it."""
    lic, node = world.licenses, world.nodes[0].address
    lic.set_status(1, LicenseStatus.BLACKLISTED, sender=world.admin)
    with pytest.raises(reverts.LicenseRegistryNodeBanned) as err:  # banned is checked before linked-elsewhere
        lic.link_node(CSP_LICENSE, node, sender=world.csp)
    assert args_of(err) == {"node": node}
    with pytest.raises(reverts.LicenseRegistryLicenseBlacklisted):  # the record of what it served stays
        lic.unlink_node(1, sender=world.owners[0])
    assert lic.license_of_node(node) == 1
    assert lic.node_of(CSP_LICENSE) is None


def test_link_node_to_blacklisted_license_reverts(world: World) -> None:
    lic = world.licenses
    lic.set_status(CSP_LICENSE, LicenseStatus.BLACKLISTED, sender=world.admin)
    with pytest.raises(reverts.LicenseRegistryLicenseBlacklisted) as err:
        lic.link_node(CSP_LICENSE, key(50).address, sender=world.csp)
    assert args_of(err) == {"licenseId": CSP_LICENSE}
    assert lic.node_of(CSP_LICENSE) is None
    assert not lic.is_node_banned(key(50).address)


# ---------------------------------------------------------------------- unlinkNode and the cooldown


def test_unlink_node_clears_link_starts_cooldown_and_emits(world: World) -> None:
    lic, node = world.licenses, world.nodes[0].address
    receipt = lic.unlink_node(1, sender=world.owners[0])
    ready_at = block_time(world, receipt) + COOLDOWN_S
    assert events(lic, receipt) == [("NodeUnlinked", {"licenseId": 1, "node": node, "relinkReadyAt": ready_at})]
    assert lic.relink_ready_at(1) == ready_at
    assert lic.node_of(1) is None
    assert lic.license_of_node(node) is None
    assert not lic.is_node_eligible(node)
    assert not lic.is_node_banned(node)
    assert lic.owner_and_status_of(1) == (world.owners[0], LicenseStatus.ACTIVE)


def test_unlink_node_errors(world: World) -> None:
    lic = world.licenses
    with pytest.raises(reverts.LicenseRegistryLicenseNotLinked) as err:
        lic.unlink_node(CSP_LICENSE, sender=world.csp)
    assert args_of(err) == {"licenseId": CSP_LICENSE}
    with pytest.raises(reverts.LicenseRegistryNotLicenseOwner) as err:
        lic.unlink_node(1, sender=world.outsider)
    assert args_of(err) == {"licenseId": 1, "caller": world.outsider}
    with pytest.raises(reverts.LicenseRegistryUnknownLicense) as err:
        lic.unlink_node(8, sender=world.outsider)
    assert args_of(err) == {"licenseId": 8}
    assert lic.relink_ready_at(CSP_LICENSE) == 0
    assert lic.node_of(1) == world.nodes[0].address


@pytest.mark.parametrize("same_node", [True, False])
def test_relink_waits_for_cooldown(world: World, same_node: bool) -> None:
    lic, owner = world.licenses, world.owners[0]
    node = world.nodes[0].address if same_node else key(50).address
    ready_at = unlink_and_ready_at(world, 1, owner)
    with pytest.raises(reverts.LicenseRegistryRelinkCooldown) as err:
        lic.link_node(1, node, sender=owner)
    assert args_of(err) == {"licenseId": 1, "readyAt": ready_at}
    # still locked shortly before readyAt (a margin, so wall-clock drift on anvil cannot matter)
    world.chain.advance_time(ready_at - 10 - world.chain.now())
    with pytest.raises(reverts.LicenseRegistryRelinkCooldown) as err:
        lic.link_node(1, node, sender=owner)
    assert args_of(err) == {"licenseId": 1, "readyAt": ready_at}
    assert lic.node_of(1) is None
    # the exact boundary, simulated in blocks stamped readyAt - 1 and readyAt
    link = lic.contract.functions.linkNode(1, node)
    world.chain.advance_time(ready_at - 1 - world.chain.now())
    with pytest.raises(reverts.LicenseRegistryRelinkCooldown) as err:
        world.chain.call(AtBlock(link, world.chain.block_number()), owner)
    assert args_of(err) == {"licenseId": 1, "readyAt": ready_at}
    world.chain.advance_time(1)
    assert world.chain.now() == ready_at
    assert world.chain.call(AtBlock(link, world.chain.block_number()), owner) == []
    receipt = lic.link_node(1, node, sender=owner)
    assert block_time(world, receipt) >= ready_at
    assert events(lic, receipt) == [("NodeLinked", {"licenseId": 1, "node": node})]
    assert lic.node_of(1) == node
    assert lic.license_of_node(node) == 1
    assert lic.is_node_eligible(node)


def test_cooldown_binds_the_node_too(world: World) -> None:
    """An unlinked node cannot hop to another license before the cooldown: no multiplying pay by
    moving one machine between deeds."""
    lic, node = world.licenses, world.nodes[0].address
    ready_at = unlink_and_ready_at(world, 1, world.owners[0])
    assert lic.contract.functions.nodeRelinkReadyAt(node).call() == ready_at
    with pytest.raises(reverts.LicenseRegistryNodeCooldown) as err:
        lic.link_node(CSP_LICENSE, node, sender=world.csp)
    assert args_of(err) == {"node": node, "readyAt": ready_at}
    assert lic.license_of_node(node) is None
    world.chain.advance_time(ready_at - world.chain.now() + 1)
    lic.link_node(CSP_LICENSE, node, sender=world.csp)
    assert lic.license_of_node(node) == CSP_LICENSE
    assert lic.is_node_eligible(node)


# ---------------------------------------------------------------------- setStatus


TRANSITIONS = [(a, b) for a in NOT_BLACKLISTED for b in LicenseStatus if a != b]


@pytest.mark.parametrize(("previous", "current"), TRANSITIONS, ids=lambda s: s.name)
def test_set_status_transitions(world: World, previous: LicenseStatus, current: LicenseStatus) -> None:
    lic = world.licenses
    if previous != LicenseStatus.ACTIVE:
        lic.set_status(2, previous, sender=world.admin)
    receipt = lic.set_status(2, current, sender=world.admin)
    assert events(lic, receipt) == [
        ("LicenseStatusChanged", {"licenseId": 2, "previous": int(previous), "current": int(current)}),
    ]
    assert lic.status_of(2) == current
    assert lic.owner_and_status_of(2) == (world.owners[1], current)
    assert lic.is_node_eligible(world.nodes[1].address) is (current == LicenseStatus.ACTIVE)
    assert lic.is_node_banned(world.nodes[1].address) is (current == LicenseStatus.BLACKLISTED)
    assert lic.status_of(1) == LicenseStatus.ACTIVE  # no other license moved


@pytest.mark.parametrize("status", NOT_BLACKLISTED, ids=lambda s: s.name)
def test_set_status_unchanged_reverts(world: World, status: LicenseStatus) -> None:
    lic = world.licenses
    if status != LicenseStatus.ACTIVE:
        lic.set_status(2, status, sender=world.admin)
    with pytest.raises(reverts.LicenseRegistryStatusUnchanged) as err:
        lic.set_status(2, status, sender=world.admin)
    assert args_of(err) == {"licenseId": 2, "status": int(status)}
    assert lic.status_of(2) == status


@pytest.mark.parametrize("status", list(LicenseStatus), ids=lambda s: s.name)
def test_blacklisting_is_final(world: World, status: LicenseStatus) -> None:
    """Even re-blacklisting reports LicenseBlacklisted, not StatusUnchanged."""
    lic = world.licenses
    lic.set_status(2, LicenseStatus.BLACKLISTED, sender=world.admin)
    with pytest.raises(reverts.LicenseRegistryLicenseBlacklisted) as err:
        lic.set_status(2, status, sender=world.admin)
    assert args_of(err) == {"licenseId": 2}
    assert lic.status_of(2) == LicenseStatus.BLACKLISTED
    assert lic.is_node_banned(world.nodes[1].address)


def test_blacklisting_bans_only_the_linked_node(world: World) -> None:
    lic, node = world.licenses, world.nodes[1].address
    lic.set_status(2, LicenseStatus.BLACKLISTED, sender=world.admin)
    assert lic.is_node_banned(node)
    assert lic.node_of(2) == node  # the link stays, for the record
    assert lic.license_of_node(node) == 2
    assert not lic.is_node_eligible(node)
    for other in (world.nodes[0].address, world.nodes[2].address):
        assert not lic.is_node_banned(other)
        assert lic.is_node_eligible(other)


def test_blacklisting_after_unlink_still_bans_the_former_node(world: World) -> None:
    """Unlinking just before a blacklisting lands does not save the node: the license remembers the
    node it unlinked last, and the ban covers it."""
    lic, node = world.licenses, world.nodes[0].address
    lic.unlink_node(1, sender=world.owners[0])
    assert lic.contract.functions.previousNodeOf(1).call() == node
    lic.set_status(1, LicenseStatus.BLACKLISTED, sender=world.admin)
    assert lic.is_node_banned(node)
    world.chain.advance_time(COOLDOWN_S + 1)
    with pytest.raises(reverts.LicenseRegistryNodeBanned) as err:
        lic.link_node(CSP_LICENSE, node, sender=world.csp)
    assert args_of(err) == {"node": node}


def test_frozen_is_reversible(world: World) -> None:
    lic, node = world.licenses, world.nodes[0].address
    lic.set_status(1, LicenseStatus.FROZEN, sender=world.admin)
    assert not lic.is_node_eligible(node)
    lic.set_status(1, LicenseStatus.ACTIVE, sender=world.admin)
    assert lic.is_node_eligible(node)
    assert not lic.is_node_banned(node)


@pytest.mark.parametrize("license_id", [0, 8])
def test_set_status_unknown_license_reverts(world: World, license_id: int) -> None:
    with pytest.raises(reverts.LicenseRegistryUnknownLicense) as err:
        world.licenses.set_status(license_id, LicenseStatus.FROZEN, sender=world.admin)
    assert args_of(err) == {"licenseId": license_id}


@pytest.mark.parametrize("who", ["outsider", "license_owner", "minter_only"])
def test_set_status_without_governance_role_reverts_and_changes_nothing(world: World, who: str) -> None:
    lic = world.licenses
    sender = {"outsider": world.outsider, "license_owner": world.owners[0], "minter_only": world.chain.accounts[8]}[who]
    if who == "minter_only":
        lic.grant_role(MINTER_ROLE, sender, sender=world.admin)
    before = registry_state(world)
    for status in (LicenseStatus.FROZEN, LicenseStatus.BLACKLISTED):
        with pytest.raises(reverts.AccessControlUnauthorizedAccount) as err:
            lic.set_status(1, status, sender=sender)
        assert args_of(err) == {"account": sender, "neededRole": GOVERNANCE_ROLE}
    assert registry_state(world) == before
    assert not lic.is_node_banned(world.nodes[0].address)


def test_granted_governance_role_may_set_status(world: World) -> None:
    lic, gov = world.licenses, world.chain.accounts[8]
    lic.grant_role(GOVERNANCE_ROLE, gov, sender=world.admin)
    receipt = lic.set_status(1, LicenseStatus.SUSPENDED, sender=gov)
    assert events(lic, receipt) == [("LicenseStatusChanged", {"licenseId": 1, "previous": 0, "current": 2})]


# ---------------------------------------------------------------------- eligibility and status views


@pytest.mark.parametrize("status", list(LicenseStatus), ids=lambda s: s.name)
def test_is_node_eligible_per_status(world: World, status: LicenseStatus) -> None:
    lic, node = world.licenses, world.nodes[3].address
    if status != LicenseStatus.ACTIVE:
        lic.set_status(4, status, sender=world.admin)
    assert lic.is_node_eligible(node) is (status == LicenseStatus.ACTIVE)
    assert lic.owner_and_status_of(4) == (world.owners[3], status)


def test_is_node_eligible_false_for_unlinked_addresses(world: World) -> None:
    lic = world.licenses
    assert not lic.is_node_eligible(key(50).address)  # never linked
    assert not lic.is_node_eligible(ZERO)
    assert not lic.is_node_eligible(world.owners[0])  # the license owner is not its node
    lic.unlink_node(1, sender=world.owners[0])
    assert not lic.is_node_eligible(world.nodes[0].address)


@pytest.mark.parametrize("license_id", [0, 8, 2**256 - 1])
def test_status_views_revert_for_unknown_license(world: World, license_id: int) -> None:
    with pytest.raises(reverts.LicenseRegistryUnknownLicense) as err:
        world.licenses.status_of(license_id)
    assert args_of(err) == {"licenseId": license_id}
    with pytest.raises(reverts.LicenseRegistryUnknownLicense) as err:
        world.licenses.owner_and_status_of(license_id)
    assert args_of(err) == {"licenseId": license_id}


def test_link_views_return_zero_for_unknown_license(world: World) -> None:
    """nodeOf / relinkReadyAt / licenseOfNode use 0 as "none" instead of reverting."""
    lic = world.licenses
    assert lic.node_of(8) is None
    assert lic.relink_ready_at(8) == 0
    assert lic.license_of_node(ZERO) is None
    assert not lic.is_node_banned(ZERO)


# ---------------------------------------------------------------------- transfers


def test_transfer_unlinks_node_and_keeps_status(world: World) -> None:
    """The new owner links their own node; a sanction travels with the deed."""
    lic, seller, buyer, node = world.licenses, world.owners[0], world.chain.accounts[8], world.nodes[0].address
    lic.set_status(1, LicenseStatus.FROZEN, sender=world.admin)
    receipt = lic.transfer(1, buyer, sender=seller)
    ready_at = block_time(world, receipt) + COOLDOWN_S
    assert events(lic, receipt) == [
        ("Transfer", {"from": seller, "to": buyer, "tokenId": 1}),
        ("NodeUnlinked", {"licenseId": 1, "node": node, "relinkReadyAt": ready_at}),
    ]
    assert lic.owner_and_status_of(1) == (buyer, LicenseStatus.FROZEN)
    assert lic.node_of(1) is None
    assert lic.license_of_node(node) is None
    assert lic.relink_ready_at(1) == ready_at
    assert lic.balance_of(seller) == 0
    assert lic.balance_of(buyer) == 1
    with pytest.raises(reverts.LicenseRegistryNotLicenseOwner) as err:  # the seller lost control
        lic.link_node(1, node, sender=seller)
    assert args_of(err) == {"licenseId": 1, "caller": seller}
    with pytest.raises(reverts.LicenseRegistryRelinkCooldown) as err:  # the buyer waits the cooldown
        lic.link_node(1, key(50).address, sender=buyer)
    assert args_of(err) == {"licenseId": 1, "readyAt": ready_at}
    world.chain.advance_time(COOLDOWN_S)
    lic.link_node(1, key(50).address, sender=buyer)
    assert lic.license_of_node(key(50).address) == 1


def test_transfer_of_unlinked_license_emits_only_transfer(world: World) -> None:
    lic, buyer = world.licenses, world.chain.accounts[8]
    receipt = lic.transfer(CSP_LICENSE, buyer, sender=world.csp)
    assert events(lic, receipt) == [("Transfer", {"from": world.csp, "to": buyer, "tokenId": CSP_LICENSE})]
    assert lic.relink_ready_at(CSP_LICENSE) == 0
    lic.link_node(CSP_LICENSE, key(50).address, sender=buyer)
    assert lic.node_of(CSP_LICENSE) == key(50).address


@pytest.mark.parametrize("how", ["approve", "operator", "safe"])
def test_approved_and_safe_transfers_also_unlink(world: World, how: str) -> None:
    lic, owner, mover, node = world.licenses, world.owners[0], world.chain.accounts[8], world.nodes[0].address
    if how == "approve":
        tx(lic, "approve", mover, 1, sender=owner)
        receipt = tx(lic, "transferFrom", owner, mover, 1, sender=mover)
    elif how == "operator":
        tx(lic, "setApprovalForAll", mover, True, sender=owner)
        receipt = tx(lic, "transferFrom", owner, mover, 1, sender=mover)
    else:
        receipt = tx(lic, "safeTransferFrom", owner, mover, 1, sender=owner)
    assert [name for name, _ in events(lic, receipt)] == ["Transfer", "NodeUnlinked"]
    assert lic.owner_of(1) == mover
    assert lic.license_of_node(node) is None


def test_transfer_without_approval_reverts(world: World) -> None:
    lic = world.licenses
    before = registry_state(world)
    with pytest.raises(reverts.ERC721InsufficientApproval) as err:
        tx(lic, "transferFrom", world.owners[0], world.outsider, 1, sender=world.outsider)
    assert args_of(err) == {"operator": world.outsider, "tokenId": 1}
    assert registry_state(world) == before


@pytest.mark.parametrize("how", ["owner", "approved", "safe"])
def test_blacklisted_license_cannot_be_transferred(world: World, how: str) -> None:
    lic, owner, buyer = world.licenses, world.owners[0], world.chain.accounts[8]
    lic.set_status(1, LicenseStatus.BLACKLISTED, sender=world.admin)
    if how == "approved":
        tx(lic, "approve", buyer, 1, sender=owner)  # approving is still possible; moving is not
    fn, sender = {"owner": ("transferFrom", owner), "approved": ("transferFrom", buyer),
                  "safe": ("safeTransferFrom", owner)}[how]
    before = registry_state(world)
    with pytest.raises(reverts.LicenseRegistryLicenseBlacklisted) as err:
        tx(lic, fn, owner, buyer, 1, sender=sender)
    assert args_of(err) == {"licenseId": 1}
    assert registry_state(world) == before
    assert lic.owner_of(1) == owner
    assert lic.node_of(1) == world.nodes[0].address


@pytest.mark.parametrize("status", [LicenseStatus.FROZEN, LicenseStatus.SUSPENDED], ids=lambda s: s.name)
def test_frozen_and_suspended_licenses_can_be_transferred(world: World, status: LicenseStatus) -> None:
    lic, buyer = world.licenses, world.chain.accounts[8]
    lic.set_status(1, status, sender=world.admin)
    lic.transfer(1, buyer, sender=world.owners[0])
    assert lic.owner_and_status_of(1) == (buyer, status)


def test_unlink_of_blacklisted_license_is_refused(world: World) -> None:
    """A blacklisted license keeps the record of which node it served."""
    lic, node = world.licenses, world.nodes[0].address
    lic.set_status(1, LicenseStatus.BLACKLISTED, sender=world.admin)
    with pytest.raises(reverts.LicenseRegistryLicenseBlacklisted) as err:
        lic.unlink_node(1, sender=world.owners[0])
    assert args_of(err) == {"licenseId": 1}
    assert lic.node_of(1) == node
    assert lic.license_of_node(node) == 1
    assert lic.is_node_banned(node)


# ---------------------------------------------------------------------- setRelinkCooldown


def test_set_relink_cooldown_applies_to_later_unlinks_only(world: World) -> None:
    lic = world.licenses
    first = unlink_and_ready_at(world, 1, world.owners[0])  # under the old cooldown
    receipt = lic.set_relink_cooldown(7, sender=world.admin)
    assert events(lic, receipt) == [("RelinkCooldownChanged", {"previous": COOLDOWN_S, "current": 7})]
    assert lic.relink_cooldown() == 7
    assert lic.relink_ready_at(1) == first  # a pending cooldown keeps its deadline
    receipt = lic.unlink_node(2, sender=world.owners[1])
    assert lic.relink_ready_at(2) == block_time(world, receipt) + 7
    receipt = lic.set_relink_cooldown(0, sender=world.admin)
    assert events(lic, receipt) == [("RelinkCooldownChanged", {"previous": 7, "current": 0})]
    receipt = lic.unlink_node(3, sender=world.owners[2])
    lic.link_node(3, world.nodes[2].address, sender=world.owners[2])  # no cooldown: relink at once
    assert lic.license_of_node(world.nodes[2].address) == 3


def test_relink_cooldown_is_capped(world: World) -> None:
    """A misconfigured cooldown cannot make `now + cooldown` overflow and freeze every linked deed."""
    lic = world.licenses
    cap = 365 * 24 * 3600
    assert lic.contract.functions.MAX_RELINK_COOLDOWN().call() == cap
    with pytest.raises(reverts.LicenseRegistryCooldownTooLong) as err:
        lic.set_relink_cooldown(2**64 - 1, sender=world.admin)
    assert args_of(err) == {"cooldown": 2**64 - 1, "max": cap}
    assert lic.relink_cooldown() == COOLDOWN_S
    lic.set_relink_cooldown(cap, sender=world.admin)
    lic.transfer(1, world.chain.accounts[8], sender=world.owners[0])  # unlinks under the longest cooldown
    assert lic.owner_of(1) == world.chain.accounts[8]
    with pytest.raises(reverts.LicenseRegistryCooldownTooLong):
        world.chain.deploy("LicenseRegistry", world.admin, cap + 1, sender=world.admin)


@pytest.mark.parametrize("who", ["outsider", "governance_and_minter"])
def test_set_relink_cooldown_without_admin_role_reverts(world: World, who: str) -> None:
    lic = world.licenses
    sender = world.outsider if who == "outsider" else world.chain.accounts[8]
    if who == "governance_and_minter":  # the other two roles do not include the admin's
        lic.grant_role(GOVERNANCE_ROLE, sender, sender=world.admin)
        lic.grant_role(MINTER_ROLE, sender, sender=world.admin)
    with pytest.raises(reverts.AccessControlUnauthorizedAccount) as err:
        lic.set_relink_cooldown(1, sender=sender)
    assert args_of(err) == {"account": sender, "neededRole": DEFAULT_ADMIN_ROLE}
    assert lic.relink_cooldown() == COOLDOWN_S
