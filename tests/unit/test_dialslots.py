"""Turns for SSH connections being set up: caps per user and per workspace, a line behind them."""

from __future__ import annotations

import asyncio

import pytest

from hatchway.server.dialslots import DialSlots, NoSlot


def never() -> asyncio.Future[None]:
    return asyncio.get_running_loop().create_future()


async def settle() -> None:
    """Let woken waiters run (a wake-up takes a few loop iterations through asyncio.wait)."""
    for _ in range(10):
        await asyncio.sleep(0)


async def test_under_both_caps_a_slot_is_taken_at_once_and_given_back() -> None:
    slots = DialSlots(per_user=2, per_workspace=3, max_queued=4)
    assert await slots.acquire("u1", "w1", 5, never()) is True
    assert (slots.by_user, slots.by_workspace) == ({"u1": 1}, {"w1": 1})
    slots.release("u1", "w1")
    assert (slots.by_user, slots.by_workspace) == ({}, {})


async def test_over_a_cap_connections_wait_in_arrival_order_and_get_the_freed_slots() -> None:
    slots = DialSlots(per_user=2, per_workspace=10, max_queued=10)
    for _ in range(2):
        assert await slots.acquire("u1", "w1", 5, never())
    assert slots.full("u1", "w1") == "user"
    order: list[int] = []

    async def wait(i: int) -> None:
        assert await slots.acquire("u1", "w1", 5, never())
        order.append(i)

    waiting = [asyncio.create_task(wait(i)) for i in range(3)]
    await settle()
    assert slots.queued_by_user == {"u1": 3} and order == []
    slots.release("u1", "w1")
    await settle()
    assert order == [0] and slots.by_user == {"u1": 2}
    slots.release("u1", "w1")
    slots.release("u1", "w1")
    await asyncio.gather(*waiting)
    assert order == [0, 1, 2]
    assert slots.by_user == {"u1": 2} and slots.queued_by_user == {} and slots.queued_by_workspace == {}


async def test_a_freed_slot_goes_to_the_first_waiter_that_fits_under_both_caps() -> None:
    slots = DialSlots(per_user=1, per_workspace=1, max_queued=10)
    assert await slots.acquire("u1", "w1", 5, never())
    assert await slots.acquire("u2", "w2", 5, never())
    blocked = asyncio.create_task(slots.acquire("u2", "w1", 5, never()))  # w1 full and u2 full
    fits = asyncio.create_task(slots.acquire("u1", "w3", 5, never()))  # only u1 full
    await settle()
    slots.release("u1", "w1")  # u1 and w1 free: u2 is still full, so only the second fits
    await settle()
    assert fits.done() and not blocked.done()
    slots.release("u2", "w2")
    assert await blocked is True
    assert slots.by_user == {"u1": 1, "u2": 1} and slots.by_workspace == {"w1": 1, "w3": 1}


async def test_a_waiter_held_up_by_its_workspace_keeps_its_place_without_blocking_the_users_next() -> None:
    slots = DialSlots(per_user=2, per_workspace=1, max_queued=10)
    assert await slots.acquire("u1", "w1", 5, never())
    assert await slots.acquire("u1", "w2", 5, never())
    first = asyncio.create_task(slots.acquire("u1", "w1", 5, never()))  # would need w1 too
    second = asyncio.create_task(slots.acquire("u1", "w3", 5, never()))
    await settle()
    slots.release("u1", "w2")
    await settle()
    assert second.done() and not first.done()
    slots.release("u1", "w1")
    assert await first is True
    assert slots.by_user == {"u1": 2} and slots.by_workspace == {"w1": 1, "w3": 1}
    assert slots.queued_by_user == {} and slots._user_lines == {} and slots._workspace_lines == {}


async def test_a_full_line_is_refused_at_once_and_a_long_wait_is_refused_with_how_long() -> None:
    slots = DialSlots(per_user=1, per_workspace=5, max_queued=2)
    assert await slots.acquire("u1", "w1", 5, never())
    line = [asyncio.create_task(slots.acquire("u1", "w1", 0.2, never())) for _ in range(2)]
    await settle()
    with pytest.raises(NoSlot) as full:
        await slots.acquire("u1", "w1", 5, never())
    assert (full.value.which, full.value.waited) == ("user", None)
    results = await asyncio.gather(*line, return_exceptions=True)
    for r in results:
        assert isinstance(r, NoSlot) and r.which == "user"
        assert r.waited is not None and 0.19 <= r.waited < 2
    assert slots.queued_by_user == {} and slots.by_user == {"u1": 1}


async def test_the_workspace_cap_is_named_when_it_is_the_full_one() -> None:
    slots = DialSlots(per_user=5, per_workspace=1, max_queued=0)
    assert await slots.acquire("u1", "w1", 5, never())
    with pytest.raises(NoSlot) as refused:
        await slots.acquire("u2", "w1", 5, never())
    assert refused.value.which == "workspace"


async def test_an_interrupted_wait_returns_false_and_leaves_the_line() -> None:
    slots = DialSlots(per_user=1, per_workspace=5, max_queued=5)
    assert await slots.acquire("u1", "w1", 5, never())
    ended = never()
    task = asyncio.create_task(slots.acquire("u1", "w1", 5, ended))
    await settle()
    ended.set_result(None)
    assert await task is False
    assert slots.queued_by_user == {}
    slots.release("u1", "w1")
    assert slots.by_user == {}


async def test_a_cancelled_waiter_leaves_the_line_or_gives_back_the_slot_it_was_just_handed() -> None:
    slots = DialSlots(per_user=1, per_workspace=5, max_queued=5)
    assert await slots.acquire("u1", "w1", 5, never())
    gone = asyncio.create_task(slots.acquire("u1", "w1", 5, never()))
    await settle()
    gone.cancel()
    await asyncio.gather(gone, return_exceptions=True)
    assert slots.queued_by_user == {} and slots.by_user == {"u1": 1}
    # Handed the slot, then cancelled before it ran: the slot is given back, not lost.
    handed = asyncio.create_task(slots.acquire("u1", "w1", 5, never()))
    await settle()
    slots.release("u1", "w1")  # hands the slot to the waiter...
    assert slots.by_user == {"u1": 1}
    handed.cancel()  # ...which is cancelled before it resumes
    await asyncio.gather(handed, return_exceptions=True)
    assert slots.by_user == {} and slots.queued_by_user == {}
    assert slots._user_lines == {} and slots._workspace_lines == {}


async def test_a_connection_without_a_user_is_capped_per_workspace_only() -> None:
    slots = DialSlots(per_user=1, per_workspace=2, max_queued=0)
    assert await slots.acquire("", "w1", 5, never())
    assert await slots.acquire("", "w1", 5, never())
    assert slots.by_user == {} and slots.by_workspace == {"w1": 2}
    with pytest.raises(NoSlot):
        await slots.acquire("", "w1", 5, never())


@pytest.mark.parametrize("seed", range(20))
async def test_random_bursts_never_exceed_a_cap_and_everyone_is_served_in_the_end(seed: int) -> None:
    """Random arrivals, cancellations and slot returns over 3 users and 3 workspaces: the caps
    always hold, nobody waits while their user and workspace both have room, and once every slot
    is back nothing is left behind."""
    import random

    rng = random.Random(seed)
    slots = DialSlots(per_user=2, per_workspace=3, max_queued=50)
    holding: list[tuple[str, str]] = []
    tasks: dict[asyncio.Task[bool], tuple[str, str]] = {}

    async def step() -> None:
        """Let the woken run, collect who got a slot, and check the invariants."""
        await settle()
        for task in [t for t in tasks if t.done()]:
            key = tasks.pop(task)
            if not task.cancelled() and task.exception() is None and task.result():
                holding.append(key)
        check()

    def check() -> None:
        assert all(n <= 2 for n in slots.by_user.values()) and all(n <= 3 for n in slots.by_workspace.values())
        for task, (u, w) in tasks.items():
            if not task.done():
                assert slots.full(u, w) is not None, f"{u}/{w} waits with room for it"

    for _ in range(300):
        action = rng.random()
        if action < 0.5:
            key = (f"u{rng.randrange(3)}", f"w{rng.randrange(3)}")
            tasks[asyncio.create_task(slots.acquire(*key, 30, never()))] = key
        elif action < 0.85 and holding:
            slots.release(*holding.pop(rng.randrange(len(holding))))
        else:
            waiting = [t for t in tasks if not t.done()]
            if waiting:
                rng.choice(waiting).cancel()
        await step()
    while holding or any(not t.done() for t in tasks):
        if holding:
            slots.release(*holding.pop())
        await step()
    assert slots.by_user == {} and slots.by_workspace == {}
    assert slots.queued_by_user == {} and slots.queued_by_workspace == {}
    assert slots._user_lines == {} and slots._workspace_lines == {}
