"""Transactions from keys the node does not hold (any JSON-RPC URL) are signed locally."""

from __future__ import annotations

import pytest

from contracts import reverts

from .world import World, key


def test_a_local_key_links_its_node_and_reverts_are_still_named(world: World) -> None:
    operator = key(777)
    world.chain.add_signer(operator)
    world.chain.send_value(world.admin, operator.address, 10**18)  # gas money on the dev chain
    license_id = world.licenses.mint(operator.address, sender=world.admin)
    receipt = world.licenses.link_node(license_id, key(778).address, sender=operator.address)
    assert receipt["from"] == operator.address
    assert world.licenses.node_of(license_id) == key(778).address
    with pytest.raises(reverts.LicenseRegistryLicenseAlreadyLinked) as info:
        world.licenses.link_node(license_id, key(779).address, sender=operator.address)
    assert info.value.values == (license_id, key(778).address)
    # the failed attempt was caught before sending: the nonce did not move
    assert world.chain.w3.eth.get_transaction_count(operator.address) == 1
