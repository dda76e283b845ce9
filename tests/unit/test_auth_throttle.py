"""Login throttling decisions: free failures, exponential lockout, forgetting, parallel guesses."""

from __future__ import annotations

import pytest

from auth_svc.throttle import (
    BUSY,
    FRESH,
    LOCKED,
    LoginThrottle,
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


def test_throttle_per_user_and_per_address() -> None:
    clock = Clock()
    throttle = LoginThrottle(POLICY, ThrottlePolicy(free_failures=5, limit_parallel=False), clock=clock)
    for _ in range(3):
        throttle.finish(throttle.begin("alice", "10.0.0.1"), succeeded=False)
    with pytest.raises(Throttled) as locked:
        throttle.begin("alice", "10.0.0.2")  # another address: the user is still locked
    assert locked.value.key_kind == "user" and locked.value.retry_after_s == pytest.approx(1.0)
    assert locked.value.why == LOCKED and "failed logins" in str(locked.value)
    # Another user from the first address: 3 of 5 address failures used.
    throttle.finish(throttle.begin("bob", "10.0.0.1"), succeeded=False)
    throttle.finish(throttle.begin("carol", "10.0.0.1"), succeeded=False)
    with pytest.raises(Throttled) as by_address:
        throttle.begin("dave", "10.0.0.1")
    assert by_address.value.key_kind == "address"
    clock.now += 1.0
    ticket = throttle.begin("alice", "10.0.0.3")
    throttle.finish(ticket, succeeded=True)  # success clears the user's failures
    throttle.finish(throttle.begin("alice", "10.0.0.3"), succeeded=False)
    throttle.begin("alice", "10.0.0.3")


def test_unknown_outcome_only_releases() -> None:
    throttle = LoginThrottle(POLICY, POLICY, clock=Clock())
    tickets = [throttle.begin("alice", "") for _ in range(3)]
    with pytest.raises(Throttled) as busy:
        throttle.begin("alice", "")
    assert busy.value.why == BUSY and "at once" in str(busy.value)
    for ticket in tickets:
        throttle.finish(ticket, succeeded=None)
    assert throttle.tracked_keys == 0
    throttle.begin("alice", "")


def test_capacity_is_bounded() -> None:
    throttle = LoginThrottle(POLICY, POLICY, clock=Clock(), capacity=10)
    for i in range(100):
        throttle.finish(throttle.begin(f"user{i}", f"10.0.0.{i}"), succeeded=False)
    assert throttle.tracked_keys == 20
