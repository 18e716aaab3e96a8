"""One task per wanted key: what the WAR and ChainDist supervisors keep for the replicas a plan holds.

``want`` names the keys wanted now, each with its spec (never blocks; the scheduler calls it on
every plan). ``run`` starts a task for each new key, cancels the task of a key no longer wanted,
and hands a key's new spec to ``on_update``, or, if that refuses it, starts the key over. A task
that ends on its own (an error) is forgotten, so the next ``want`` or ``retry`` starts it again.
``stopped_on`` is how a task's body ends on an error it outlives (the engine or the disk failing).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Generic, TypeVar

import trio

from ._errors import first_leaf
from ._trio_types import TaskStatus

K = TypeVar("K")
S = TypeVar("S")
W = TypeVar("W")


class KeyedTasks(Generic[K, S, W]):
    def __init__(self, make: Callable[[K, S], W], run: Callable[[W], Awaitable[None]],
                 on_drop: Callable[[W], None] = lambda _: None,
                 on_update: Callable[[W, S], bool] = lambda _, __: False) -> None:
        self._make, self._run, self._on_drop, self._on_update = make, run, on_drop, on_update
        self.items: dict[K, tuple[W, S, trio.CancelScope]] = {}
        self._wanted: dict[K, S] = {}
        self._wake = trio.Event()

    def want(self, wanted: Mapping[K, S]) -> None:
        if dict(wanted) != self._wanted:
            self._wanted = dict(wanted)
            self._wake.set()

    def get(self, key: K) -> W | None:
        held = self.items.get(key)
        return None if held is None else held[0]

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                await self._wake.wait()
                self._wake = trio.Event()
                for key, (item, spec, scope) in list(self.items.items()):
                    new = self._wanted.get(key)
                    if new is not None and new != spec and self._on_update(item, new):
                        self.items[key] = (item, new, scope)  # taken in place: the task lives on
                    elif new != spec:
                        scope.cancel()
                        del self.items[key]
                        self._on_drop(item)
                for key, spec in self._wanted.items():
                    if key not in self.items:
                        item, scope = self._make(key, spec), trio.CancelScope()
                        self.items[key] = (item, spec, scope)
                        nursery.start_soon(self._one, key, item, scope)

    async def _one(self, key: K, item: W, scope: trio.CancelScope) -> None:
        with scope:
            await self._run(item)
        if not scope.cancel_called and self.items.get(key, (None,))[0] is item:
            del self.items[key]  # it ended on its own: started again at the next wake
            self._wake.set()


async def stopped_on(errors: tuple[type[Exception], ...], run: Callable[[], Awaitable[None]],
                     say: Callable[[BaseException], None], retry_s: float) -> bool:
    """Run ``run``; if it stops on one of ``errors``, ``say`` the first of them, wait ``retry_s``
    and return True (the task then ends and ``KeyedTasks`` starts it over); False if it ended on
    its own. ``run`` usually holds a nursery, out of which its error comes inside an exception
    group: matched with ``except*``, and waited out after it, so that a cancel while waiting does
    not come out inside a group."""
    stopped = False
    try:
        await run()
    except* errors as group:
        say(first_leaf(group))
        stopped = True
    if stopped:
        await trio.sleep(retry_s)
    return stopped
