"""Login and registration throttling per user name and per client address: exponential lockout.

The decision (`decide`, `after_failure`) is pure, with the clock passed in. The failure counts
live in a `ThrottleStore`: the accounts database in a running service (`AuthStore`), so every
auth instance on one database sees the same counts and a restart resets nothing; in memory for
tests. Only the count of attempts in flight (the parallel-guess limit) is per instance.

Keys: `user:<name>` (failed logins of a user name), `addr:<address>` (failed logins from a
client address) and `reg:<address>` (registrations from a client address, each one counted).
The address is the real client's: the BFF and the gateway pass it, and auth believes them only
when they connect from `--trusted-proxies` (servicer.client_address).
"""

from __future__ import annotations

import functools
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol


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

    def __init__(self, retry_after_s: float, key_kind: str, why: str = LOCKED, text: str = "") -> None:
        if not text:
            text = (
                "too many login attempts for this user at once" if why == BUSY else "too many failed logins"
            )
        super().__init__(f"{text}; retry in {retry_after_s:.1f}s")
        self.retry_after_s = retry_after_s
        self.key_kind = key_kind
        self.why = why


@dataclass(frozen=True)
class Ticket:
    """An admitted login attempt; hand it back to `LoginThrottle.finish`."""

    user_key: str
    address_key: str


class ThrottleStore(Protocol):
    """Where failure counts are kept (shared by every auth instance on one database)."""

    async def throttle_entries(self, keys: Sequence[str]) -> dict[str, Attempts]: ...

    async def change_throttle_entry(self, key: str, change: Callable[[Attempts], Attempts]) -> Attempts: ...

    async def forget_throttle_entry(self, key: str) -> None: ...


class MemoryThrottleStore:
    """A ThrottleStore in one process's memory, at most `capacity` keys (LRU): for tests."""

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self.entries: OrderedDict[str, Attempts] = OrderedDict()

    async def throttle_entries(self, keys: Sequence[str]) -> dict[str, Attempts]:
        return {k: self.entries[k] for k in keys if k in self.entries}

    async def change_throttle_entry(self, key: str, change: Callable[[Attempts], Attempts]) -> Attempts:
        self.entries[key] = changed = change(self.entries.get(key, FRESH))
        self.entries.move_to_end(key)
        while len(self.entries) > self.capacity:
            self.entries.popitem(last=False)
        return changed

    async def forget_throttle_entry(self, key: str) -> None:
        self.entries.pop(key, None)


def user_key(username: str) -> str:
    return "user:" + username


def address_key(address: str) -> str:
    return "addr:" + address


def register_key(address: str) -> str:
    return "reg:" + address


class LoginThrottle:
    """Throttles logins per user name and client address, and registrations per address.

    A success clears the user name's failures but not the address's (else an attacker could
    clear its address by logging in to its own account between guesses).
    """

    def __init__(
        self,
        store: ThrottleStore,
        user_policy: ThrottlePolicy,
        address_policy: ThrottlePolicy,
        register_policy: ThrottlePolicy | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._policies = {"user": user_policy, "addr": address_policy}
        self._register_policy = register_policy or ThrottlePolicy(
            free_failures=10, base_lockout_s=60.0, max_lockout_s=3600.0, limit_parallel=False
        )
        self._in_flight: dict[str, int] = {}
        self._clock = clock

    def _policy(self, key: str) -> ThrottlePolicy:
        return self._policies[key.split(":", 1)[0]]

    async def begin(self, username: str, address: str) -> Ticket:
        """Admit one login attempt or raise Throttled with the longer of the two waits.

        The attempt takes its place among those in flight before the shared counts are read
        (an await): parallel guesses then see each other, as they would without the read.
        """
        keys = [user_key(username)] + ([address_key(address)] if address else [])
        ahead = {key: self._in_flight.get(key, 0) for key in keys}
        for key in keys:
            self._in_flight[key] = ahead[key] + 1
        try:
            known = await self._store.throttle_entries(keys)
            now = self._clock()
            waits = [
                (*decide(known.get(key, FRESH), ahead[key], now, self._policy(key)), key) for key in keys
            ]
            wait, why, key = max(waits)
            if wait:
                raise Throttled(wait, "user" if key.startswith("user:") else "address", why)
        except BaseException:
            self._release(keys)
            raise
        return Ticket(keys[0], keys[1] if len(keys) > 1 else "")

    def _release(self, keys: Sequence[str]) -> None:
        for key in keys:
            left = self._in_flight.get(key, 0) - 1
            if left > 0:
                self._in_flight[key] = left
            else:
                self._in_flight.pop(key, None)

    async def finish(self, ticket: Ticket, succeeded: bool | None) -> None:
        """Record the outcome: True, False, or None when it is unknown (cancelled, errored)."""
        keys = [k for k in (ticket.user_key, ticket.address_key) if k]
        self._release(keys)
        if succeeded is None:
            return
        if succeeded:
            await self._store.forget_throttle_entry(ticket.user_key)
            return
        now = self._clock()
        for key in keys:
            failed = functools.partial(after_failure, now=now, policy=self._policy(key))
            await self._store.change_throttle_entry(key, failed)

    async def register_attempt(self, address: str) -> None:
        """Count one registration from `address`, or raise Throttled when it has had its share."""
        if not address:
            return
        key, policy = register_key(address), self._register_policy
        now = self._clock()
        known = await self._store.throttle_entries([key])
        wait, why = decide(known.get(key, FRESH), 0, now, policy)
        if wait:
            raise Throttled(wait, "address", why, "too many registrations from this address")
        await self._store.change_throttle_entry(key, functools.partial(after_failure, now=now, policy=policy))

    @property
    def in_flight(self) -> int:
        """Login attempts admitted here and not finished."""
        return sum(self._in_flight.values())
