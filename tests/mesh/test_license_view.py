"""The license gate reads the real contract (eth-tester here) through a worker thread."""

from __future__ import annotations

import trio

from contracts import ChainUnreachable, LicenseStatus
from mesh._license_view import ChainWorker, LicenseView, fetch_eligible, fetch_oracles

from ..contracts.world import World, build_world


async def test_status_changes_on_chain_take_effect_at_the_next_refresh() -> None:
    from contracts import Chain

    world: World = await trio.to_thread.run_sync(lambda: build_world(Chain.embedded()))
    view = LicenseView(lambda: fetch_eligible(world.licenses), ChainWorker(), refresh_s=0.05)
    changes: list[tuple[frozenset[str], frozenset[str]]] = []
    view.on_change.append(lambda old, new: changes.append((old, new)))
    nodes = [n.address for n in world.nodes]
    async with trio.open_nursery() as nursery:
        await nursery.start(view.run)
        assert view.eligible == frozenset(nodes)
        await trio.to_thread.run_sync(
            lambda: world.licenses.set_status(world.license_ids[1], LicenseStatus.BLACKLISTED, sender=world.admin))
        with trio.fail_after(10):
            while view.is_eligible(nodes[1]):
                await view.refreshed.wait()
        assert view.eligible == frozenset(nodes) - {nodes[1]}
        assert changes[-1] == (frozenset(nodes), frozenset(nodes) - {nodes[1]})
        nursery.cancel_scope.cancel()


async def test_an_unreachable_chain_keeps_the_last_view() -> None:
    calls = {"n": 0}

    def flaky() -> frozenset[str]:
        calls["n"] += 1
        if calls["n"] > 1:
            raise ChainUnreachable("http://127.0.0.1:1", "refused")
        return frozenset({"0xabc"})

    view = LicenseView(flaky, ChainWorker())
    await view.refresh()
    await view.refresh()
    assert view.failures == 1
    assert view.is_eligible("0xabc")


async def test_no_new_block_no_second_pass_over_the_licenses() -> None:
    fetched: list[int] = []
    block, eligible = [7], [frozenset({"0xabc"})]

    def fetch() -> frozenset[str]:
        fetched.append(block[0])
        return eligible[0]

    view = LicenseView(fetch, ChainWorker(), block=lambda: block[0])
    await view.refresh()
    await view.refresh()  # same block: the last pass stands
    assert fetched == [7]
    block[0], eligible[0] = 8, frozenset()  # a block with a ban in it
    await view.refresh()
    assert fetched == [7, 8]
    assert not view.is_eligible("0xabc")


async def test_the_oracle_registrys_oracles_are_known_and_follow_the_chain() -> None:
    from contracts import Chain

    world: World = await trio.to_thread.run_sync(lambda: build_world(Chain.embedded()))
    view = LicenseView(lambda: fetch_eligible(world.licenses), ChainWorker(), refresh_s=0.05,
                       block=world.chain.block_number, fetch_oracles=lambda: fetch_oracles(world.oracles))
    registered = [k.address for k in world.oracle_keys]
    async with trio.open_nursery() as nursery:
        await nursery.start(view.run)
        assert all(view.is_oracle(a) for a in registered)
        assert not any(view.is_eligible(a) for a in registered)  # an oracle is not a node: never placed on
        assert not any(view.is_oracle(n.address) for n in world.nodes)
        await trio.to_thread.run_sync(lambda: world.oracles.remove_oracle(registered[0], sender=world.admin))
        with trio.fail_after(10):
            while view.is_oracle(registered[0]):
                await view.refreshed.wait()
        assert all(view.is_oracle(a) for a in registered[1:])
        nursery.cancel_scope.cancel()
