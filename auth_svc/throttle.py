"""Login throttling per user name and per client address: exponential lockout after failures.

The decision (`decide`, `after_failure`) is pure, with the clock passed in. `LoginThrottle`
keeps the state in memory, bounded in size: each auth instance keeps its own, so with N
instances behind a balancer an attacker gets up to N times the free attempts (a shared store
would fix that; the per-instance limit still bounds the rate).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class ThrottlePolicy:
    """How many failures are free, and how long lockouts last after that."""

    free_failures: int = 5
    base_lockout_s: float = 1.0
    max_lockout_s: float = 900.0
    # Failures older than this are forgotten (the count starts again).
    forget_after_s: float = 3600.0
    # Cap attempts in flight at the failures still free (per user name: parallel guesses then
    # get no more tries than sequential ones). Off for addresses, where a proxy or NAT carries
    # many users' logins at once; the bcrypt waiting line bounds those.
    limit_parallel: bool = True
    # Retry hint when the key is not locked but as many attempts as allowed are in flight.
    busy_retry_s: float = 0.5


@dataclass(frozen=True)
class Attempts:
    """Failed logins of one key (a user name or a client address)."""

    failures: int = 0
    locked_until: float = 0.0
    last_failure: float = 0.0


FRESH = Attempts()


def current(attempts: Attempts, now: float, policy: ThrottlePolicy) -> Attempts:
    """`attempts`, or a clean slate when the last failure is older than `forget_after_s`."""
    if attempts.failures and now - attempts.last_failure >= policy.forget_after_s:
        return FRESH
    return attempts


LOCKED = "locked"
BUSY = "busy"


def decide(attempts: Attempts, in_flight: int, now: float, policy: ThrottlePolicy) -> tuple[float, str]:
    """(seconds to wait, LOCKED or BUSY); (0.0, "") means go ahead.

    Locked keys wait out the lockout. With `limit_parallel`, no more attempts may run at once
    than failures are still free (at least one).
    """
    attempts = current(attempts, now, policy)
    if now < attempts.locked_until:
        return attempts.locked_until - now, LOCKED
    if policy.limit_parallel and in_flight >= max(1, policy.free_failures - attempts.failures):
        return policy.busy_retry_s, BUSY
    return 0.0, ""


def lockout_s(failures: int, policy: ThrottlePolicy) -> float:
    """Lockout after the `failures`-th failure: none while free, then base x 2^k, capped."""
    over = failures - policy.free_failures
    if over < 0:
        return 0.0
    return min(policy.max_lockout_s, policy.base_lockout_s * 2.0 ** min(over, 64))


def after_failure(attempts: Attempts, now: float, policy: ThrottlePolicy) -> Attempts:
    """The state after one more failed login at `now`."""
    attempts = current(attempts, now, policy)
    failures = attempts.failures + 1
    locked = lockout_s(failures, policy)
    return replace(
        attempts,
        failures=failures,
        locked_until=now + locked if locked else attempts.locked_until,
        last_failure=now,
    )


class Throttled(Exception):
    """Login refused for now: `retry_after_s` says when to come back, `key_kind` ("user" or
    "address") and `why` (LOCKED or BUSY) say why."""

    def __init__(self, retry_after_s: float, key_kind: str, why: str = LOCKED) -> None:
        if why == BUSY:
            text = "too many login attempts for this user at once"
        else:
            text = "too many failed logins"
        super().__init__(f"{text}; retry in {retry_after_s:.1f}s")
        self.retry_after_s = retry_after_s
        self.key_kind = key_kind
        self.why = why


@dataclass(frozen=True)
class Ticket:
    """An admitted login attempt; hand it back to `LoginThrottle.finish`."""

    user_key: str
    address_key: str


class _Table:
    """Attempts and in-flight counts for one kind of key, at most `capacity` keys (LRU)."""

    def __init__(self, policy: ThrottlePolicy, capacity: int) -> None:
        self.policy = policy
        self.capacity = capacity
        self.attempts: OrderedDict[str, Attempts] = OrderedDict()
        self.in_flight: dict[str, int] = {}

    def decide(self, key: str, now: float) -> tuple[float, str]:
        return decide(self.attempts.get(key, FRESH), self.in_flight.get(key, 0), now, self.policy)

    def begin(self, key: str) -> None:
        self.in_flight[key] = self.in_flight.get(key, 0) + 1

    def end(self, key: str) -> None:
        left = self.in_flight.get(key, 0) - 1
        if left > 0:
            self.in_flight[key] = left
        else:
            self.in_flight.pop(key, None)

    def fail(self, key: str, now: float) -> None:
        self.attempts[key] = after_failure(self.attempts.get(key, FRESH), now, self.policy)
        self.attempts.move_to_end(key)
        while len(self.attempts) > self.capacity:
            self.attempts.popitem(last=False)

    def forget(self, key: str) -> None:
        self.attempts.pop(key, None)


class LoginThrottle:
    """In-memory login throttle for one instance: per user name and per client address.

    A success clears the user name's failures but not the address's (else an attacker could
    clear its address by logging in to its own account between guesses).
    """

    def __init__(
        self,
        user_policy: ThrottlePolicy,
        address_policy: ThrottlePolicy,
        clock: Callable[[], float] = time.monotonic,
        capacity: int = 100_000,
    ) -> None:
        self._users = _Table(user_policy, capacity)
        self._addresses = _Table(address_policy, capacity)
        self._clock = clock

    def begin(self, username: str, address: str) -> Ticket:
        """Admit one attempt or raise Throttled with the longer of the two waits."""
        now = self._clock()
        user_wait, user_why = self._users.decide(username, now)
        address_wait, address_why = self._addresses.decide(address, now) if address else (0.0, "")
        if user_wait or address_wait:
            if user_wait >= address_wait:
                raise Throttled(user_wait, "user", user_why)
            raise Throttled(address_wait, "address", address_why)
        self._users.begin(username)
        if address:
            self._addresses.begin(address)
        return Ticket(username, address)

    def finish(self, ticket: Ticket, succeeded: bool | None) -> None:
        """Record the outcome: True, False, or None when it is unknown (cancelled, errored)."""
        now = self._clock()
        self._users.end(ticket.user_key)
        if ticket.address_key:
            self._addresses.end(ticket.address_key)
        if succeeded is None:
            return
        if succeeded:
            self._users.forget(ticket.user_key)
            return
        self._users.fail(ticket.user_key, now)
        if ticket.address_key:
            self._addresses.fail(ticket.address_key, now)

    @property
    def tracked_keys(self) -> int:
        return len(self._users.attempts) + len(self._addresses.attempts)
