"""One task per wanted key (mesh/_keyed_tasks.py): started when wanted, cancelled when not, started
over when its spec changes, and started again after it ended on its own."""

from __future__ import annotations

import trio
import trio.testing

from mesh._keyed_tasks import KeyedTasks


class Item:
    def __init__(self, key: str, spec: int) -> None:
        self.key, self.spec = key, spec
        self.started, self.cancelled = False, False


async def test_tasks_follow_what_is_wanted(autojump_clock: trio.testing.MockClock) -> None:
    dropped: list[Item] = []
    made: list[Item] = []
    fail_once = {"b"}

    def make(key: str, spec: int) -> Item:
        made.append(Item(key, spec))
        return made[-1]

    async def run(item: Item) -> None:
        item.started = True
        if item.key in fail_once:
            fail_once.discard(item.key)
            return  # ends on its own, as a task that stopped on an error
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            item.cancelled = True
            raise

    tasks: KeyedTasks[str, int, Item] = KeyedTasks(make, run, on_drop=dropped.append)
    async with trio.open_nursery() as nursery:
        await nursery.start(tasks.run)
        tasks.want({"a": 1, "b": 1})
        await trio.testing.wait_all_tasks_blocked()
        a = tasks.get("a")
        assert a is not None
        assert a.started
        b = tasks.get("b")  # ended on its own, then started again
        assert b is not None
        assert b.started
        assert [m.key for m in made].count("b") == 2
        tasks.want({"a": 1, "b": 1})  # the same: nothing happens
        await trio.testing.wait_all_tasks_blocked()
        assert len(made) == 3
        tasks.want({"a": 2})  # a's spec changed, b is no longer wanted
        await trio.testing.wait_all_tasks_blocked()
        assert a.cancelled
        assert b.cancelled
        assert dropped == [a, b]
        new_a = tasks.get("a")
        assert new_a is not None
        assert new_a is not a
        assert (new_a.spec, new_a.started) == (2, True)
        assert tasks.get("b") is None
        nursery.cancel_scope.cancel()
