"""Login throttling decisions: free failures, exponential lockout, forgetting, parallel guesses."""

from __future__ import annotations

import pytest

from auth_svc.throttle import (
    BUSY,
    FRESH,
    LOCKED,
    LoginThrottle,
    MemoryThrottleStore,
    Throttled,
    ThrottlePolicy,
    after_failure,
    decide,
    lockout_s,
)

POLICY = ThrottlePolicy(free_failures=3, base_lockout_s=1.0, max_lockout_s=60.0, forget_after_s=600.0)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_lockout_doubles_and_caps() -> None:
    assert [lockout_s(n, POLICY) for n in range(1, 10)] == [0, 0, 1, 2, 4, 8, 16, 32, 60]
    assert lockout_s(10_000, POLICY) == 60


def test_decide_after_failures() -> None:
    state = FRESH
    for _ in range(2):
        state = after_failure(state, 100.0, POLICY)
        assert decide(state, 0, 100.0, POLICY) == (0.0, "")
    state = after_failure(state, 100.0, POLICY)  # third failure: locked 1 s
    wait, why = decide(state, 0, 100.5, POLICY)
    assert wait == pytest.approx(0.5) and why == LOCKED
    assert decide(state, 0, 101.0, POLICY) == (0.0, "")
    state = after_failure(state, 101.0, POLICY)  # fourth: 2 s
    wait, why = decide(state, 0, 101.0, POLICY)
    assert wait == pytest.approx(2.0) and why == LOCKED
    assert decide(state, 0, 101.0 + 600.0, POLICY) == (0.0, "")  # forgotten


def test_parallel_attempts_limited_to_free_failures() -> None:
    assert decide(FRESH, 2, 0.0, POLICY) == (0.0, "")
    assert decide(FRESH, 3, 0.0, POLICY) == (POLICY.busy_retry_s, BUSY)
    two = after_failure(after_failure(FRESH, 0.0, POLICY), 0.0, POLICY)
    assert decide(two, 1, 0.0, POLICY) == (POLICY.busy_retry_s, BUSY)
    unlimited = ThrottlePolicy(free_failures=3, limit_parallel=False)
    assert decide(FRESH, 1000, 0.0, unlimited) == (0.0, "")


async def test_throttle_per_user_and_per_address() -> None:
    clock = Clock()
    store = MemoryThrottleStore()
    throttle = LoginThrottle(
        store, POLICY, ThrottlePolicy(free_failures=5, limit_parallel=False), clock=clock
    )
    for _ in range(3):
        await throttle.finish(await throttle.begin("alice", "10.0.0.1"), succeeded=False)
    with pytest.raises(Throttled) as locked:
        await throttle.begin("alice", "10.0.0.2")  # another address: the user is still locked
    assert locked.value.key_kind == "user" and locked.value.retry_after_s == pytest.approx(1.0)
    assert locked.value.why == LOCKED and "failed logins" in str(locked.value)
    # Another user from the first address: 3 of 5 address failures used.
    await throttle.finish(await throttle.begin("bob", "10.0.0.1"), succeeded=False)
    await throttle.finish(await throttle.begin("carol", "10.0.0.1"), succeeded=False)
    with pytest.raises(Throttled) as by_address:
        await throttle.begin("dave", "10.0.0.1")
    assert by_address.value.key_kind == "address"
    clock.now += 1.0
    ticket = await throttle.begin("alice", "10.0.0.3")
    await throttle.finish(ticket, succeeded=True)  # success clears the user's failures
    assert "user:alice" not in store.entries and "addr:10.0.0.1" in store.entries
    await throttle.finish(await throttle.begin("alice", "10.0.0.3"), succeeded=False)
    await throttle.begin("alice", "10.0.0.3")


async def test_two_throttles_on_one_store_share_the_counts() -> None:
    """Two auth instances on one database: the failures of both count against the user."""
    clock, store = Clock(), MemoryThrottleStore()
    first = LoginThrottle(store, POLICY, POLICY, clock=clock)
    second = LoginThrottle(store, POLICY, POLICY, clock=clock)
    for throttle in (first, second, first):
        await throttle.finish(await throttle.begin("alice", ""), succeeded=False)
    with pytest.raises(Throttled):
        await second.begin("alice", "")


async def test_unknown_outcome_only_releases() -> None:
    store = MemoryThrottleStore()
    throttle = LoginThrottle(store, POLICY, POLICY, clock=Clock())
    tickets = [await throttle.begin("alice", "") for _ in range(3)]
    with pytest.raises(Throttled) as busy:
        await throttle.begin("alice", "")
    assert busy.value.why == BUSY and "at once" in str(busy.value)
    for ticket in tickets:
        await throttle.finish(ticket, succeeded=None)
    assert throttle.in_flight == 0 and not store.entries
    await throttle.begin("alice", "")


async def test_registrations_per_address_are_counted_and_locked() -> None:
    clock = Clock()
    register = ThrottlePolicy(
        free_failures=3, base_lockout_s=60.0, max_lockout_s=3600.0, limit_parallel=False
    )
    throttle = LoginThrottle(MemoryThrottleStore(), POLICY, POLICY, register, clock=clock)
    for _ in range(3):
        await throttle.register_attempt("10.0.0.1")
    with pytest.raises(Throttled) as refused:
        await throttle.register_attempt("10.0.0.1")
    assert refused.value.retry_after_s == pytest.approx(60.0) and "registrations" in str(refused.value)
    await throttle.register_attempt("10.0.0.2")  # another address is not affected
    clock.now += 60.0
    await throttle.register_attempt("10.0.0.1")


async def test_memory_store_capacity_is_bounded() -> None:
    store = MemoryThrottleStore(capacity=10)
    throttle = LoginThrottle(store, POLICY, POLICY, clock=Clock())
    for i in range(100):
        await throttle.finish(await throttle.begin(f"user{i}", f"10.0.0.{i}"), succeeded=False)
    assert len(store.entries) == 10
