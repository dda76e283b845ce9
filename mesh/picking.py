"""Balancing decisions (pure): peak-EWMA latency, p2c pick, ejection, panic mode, retry budget and retries."""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field

import grpc

from mesh.backoff import Backoff

PREDICTED_WAIT_TRAILER = "ocrmesh-predicted-wait-ms"
"""Trailer a server may send with an answer: how long a request arriving now would wait there
for a worker (its admission's prediction). p2c counts it into an endpoint's cost."""

UNSAMPLED_PENALTY_S = 1e4
"""Cost of an endpoint that has calls in flight but no latency sample yet (Finagle's penalty):
a new endpoint gets one call at a time until its first answer tells us how fast it is."""


@dataclass(frozen=True)
class BalancerPolicy:
    """How endpoints are scored, ejected and re-admitted.

    Latency is a peak EWMA: a slow sample counts at once, each faster one pulls the estimate
    `sample_weight` of the way down, and with no samples it decays with time constant `decay_s`
    (go-zero and Finagle use 10 s). Estimates below `latency_floor_s` count as equal, so jitter
    on trivial calls leaves in-flight counts to decide (least-request). An endpoint is ejected
    after `eject_after` connection failures in a row, for `eject_backoff.delay(n)` seconds
    (n = ejections in a row: about 1, 2, 4 … 30 s), then re-admitted; one more failure ejects it
    again for longer, one success clears it. When fewer than `panic_threshold` of the known
    endpoints are available, every endpoint is a candidate again (Envoy's panic threshold).
    An endpoint that answered RESOURCE_EXHAUSTED is avoided for the server's RetryInfo delay
    (`busy_default_s` without one, at most `busy_cap_s`). p2c's losing candidate is picked anyway
    when it has nothing in flight and was not picked for `probe_after_s` (go-zero's forcePick),
    so a slow endpoint's estimate keeps being refreshed.
    """

    decay_s: float = 10.0
    sample_weight: float = 0.2
    latency_floor_s: float = 0.01
    eject_after: int = 2
    eject_backoff: Backoff = field(
        default_factory=lambda: Backoff(base=1.0, factor=2.0, cap=30.0, jitter=0.2)
    )
    panic_threshold: float = 0.5
    busy_default_s: float = 0.1
    busy_cap_s: float = 5.0
    probe_after_s: float = 2.0

    def __post_init__(self) -> None:
        if self.decay_s <= 0 or self.eject_after < 1 or not 0.0 <= self.panic_threshold <= 1.0:
            raise ValueError(f"bad balancer policy {self!r}")
        if not 0.0 < self.sample_weight <= 1.0 or self.latency_floor_s < 0:
            raise ValueError(f"bad balancer policy {self!r}")


@dataclass(frozen=True)
class RetryPolicy:
    """At most `max_attempts` tries per call that reached a server; never wait longer than
    `max_wait_s` for a busy endpoint; never start a try with less than `min_attempt_s` of the
    deadline left. A retry on an endpoint already tried in this call waits `backoff.delay(n)`
    first (capped, jittered). Tries that never left this process (connection refused, no route,
    NOT_SERVING) are not counted there nor charged to the retry budget: up to `max_unsent` of them
    go to other endpoints, within the deadline (Linkerd and Envoy retry a refused connection
    the same way)."""

    max_attempts: int = 3
    max_unsent: int = 8
    max_wait_s: float = 5.0
    min_attempt_s: float = 0.005
    backoff: Backoff = field(default_factory=lambda: Backoff(base=0.05, factor=2.0, cap=1.0, jitter=0.5))

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.max_unsent < 0 or self.max_wait_s < 0 or self.min_attempt_s < 0:
            raise ValueError(f"bad retry policy {self!r}")


class Outcome(enum.Enum):
    """What one attempt on one endpoint told us about that endpoint."""

    OK = "ok"
    UNREACHABLE = "unreachable"  # UNAVAILABLE: connection failed or the endpoint is not serving
    BUSY = "busy"  # RESOURCE_EXHAUSTED: full, come back later
    TIMEOUT = "timeout"  # DEADLINE_EXCEEDED: slow (its elapsed time is a latency sample)
    ERROR = "error"  # any other answer: the endpoint is up, the call failed on its merits
    CANCELLED = "cancelled"  # the caller gave up: says nothing about the endpoint


POISON_REASONS = frozenset({"WORKER_CRASHED"})
"""UNAVAILABLE reasons that blame the request, not the endpoint (an OCR worker died twice on
it): retrying elsewhere would only crash more workers, and the endpoint is not ejected."""


CALLER_LIMIT_REASONS = frozenset({"LOGIN_THROTTLED", "LOGIN_BUSY", "REGISTER_THROTTLED"})
"""RESOURCE_EXHAUSTED reasons about the caller, not the endpoint (a throttle every instance shares):
retrying elsewhere or later within the call cannot help, and the endpoint is not busy."""


def outcome_of(code: grpc.StatusCode, reason: str = "") -> Outcome:
    """How a call's final status code (and ErrorInfo reason) counts for the endpoint that answered."""
    if code is grpc.StatusCode.OK:
        return Outcome.OK
    if code is grpc.StatusCode.UNAVAILABLE:
        return Outcome.ERROR if reason in POISON_REASONS else Outcome.UNREACHABLE
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        return Outcome.ERROR if reason in CALLER_LIMIT_REASONS else Outcome.BUSY
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return Outcome.TIMEOUT
    if code is grpc.StatusCode.CANCELLED:
        return Outcome.CANCELLED
    return Outcome.ERROR


_NOT_SENT = (
    "failed to connect",
    "connection refused",
    "connections to all backends failing",
    "dns resolution failed",
    "name resolution failure",
    "empty address list",
)
_NOT_STARTED_REASONS = frozenset({"NOT_SERVING"})
_LOCAL_LIMITS = ("larger than max",)


def executed_hint(code: grpc.StatusCode, details: str, reason: str = "") -> bool:
    """Whether a failed call may have run on the server (so only an idempotent call may be
    retried). False only when we know it did not: the connection never came up, or the server
    said NOT_SERVING before starting. A call cut mid-flight (instance killed) may have run."""
    if code is not grpc.StatusCode.UNAVAILABLE:
        return True
    if reason in _NOT_STARTED_REASONS:
        return False
    text = details.lower()
    return not any(marker in text for marker in _NOT_SENT)


_IDENTITY_CHECK = ("hostname verification", "certificate verify failed", "handshake failed", "ssl_error")


def failed_identity_check(details: str) -> bool:
    """Whether a connection failed in the TLS handshake: the peer did not prove the identity its
    registry entry claims (wrong service, another CA, expired), or spoke no TLS."""
    text = details.lower()
    return any(marker in text for marker in _IDENTITY_CHECK)


def is_local_limit(details: str) -> bool:
    """RESOURCE_EXHAUSTED raised by our own channel (message too large): no endpoint will do better."""
    text = details.lower()
    return any(marker in text for marker in _LOCAL_LIMITS)


def decayed(value: float, stamp: float, now: float, decay_s: float) -> float:
    """`value` (set at `stamp`) after decaying toward zero with time constant `decay_s`."""
    return value * math.exp(-max(0.0, now - stamp) / decay_s)


def peak_ewma(value: float, stamp: float, sample: float, now: float, decay_s: float, weight: float) -> float:
    """The latency estimate after `sample` (seconds): a peak-sensitive EWMA (Finagle's PeakEwma).

    Between samples the estimate decays toward zero with time constant `decay_s`, so an
    endpoint that was slow once gets tried again. A sample above the decayed estimate replaces
    it at once (slowness shows immediately); a faster one pulls it `weight` of the way down.
    """
    prior = decayed(value, stamp, now, decay_s)
    if sample >= prior:
        return sample
    return prior + (sample - prior) * weight


@dataclass
class EndpointStats:
    """What the balancer knows about one endpoint (mutable; every method takes the clock)."""

    address: str
    instance_id: str = ""
    weight: int = 100
    in_flight: int = 0
    ewma_s: float = 0.0
    sampled_at: float = 0.0
    samples: int = 0
    requests: int = 0
    failures: int = 0
    rejections: int = 0
    consecutive_failures: int = 0
    ejections: int = 0  # ejections in a row (since the last success)
    ejected_until: float = 0.0
    busy_until: float = 0.0
    last_pick: float = -math.inf
    reported_wait_s: float = 0.0  # the server's last predicted wait (PREDICTED_WAIT_TRAILER)
    reported_at: float = 0.0

    def report_wait(self, wait_s: float, now: float) -> None:
        """The server said a new request would wait `wait_s` for a worker (as of `now`)."""
        self.reported_wait_s, self.reported_at = max(0.0, wait_s), now

    def wait_left(self, now: float) -> float:
        """The reported wait still ahead at `now` (it drains as time passes)."""
        return max(0.0, self.reported_wait_s - max(0.0, now - self.reported_at))

    def ejected(self, now: float) -> bool:
        return now < self.ejected_until

    def latency(self, now: float, policy: BalancerPolicy) -> float:
        """The latency estimate at `now` (decayed since the last sample)."""
        return decayed(self.ewma_s, self.sampled_at, now, policy.decay_s)

    def busy(self, now: float) -> bool:
        return now < self.busy_until

    def begin(self, now: float) -> None:
        """A call is sent to this endpoint."""
        self.in_flight += 1
        self.requests += 1
        self.last_pick = now

    def end(
        self,
        outcome: Outcome,
        now: float,
        latency_s: float,
        policy: BalancerPolicy,
        rng: random.Random,
        retry_after_s: float | None = None,
    ) -> None:
        """A call sent with `begin` ended: update in-flight, latency, failures, ejection."""
        self.in_flight = max(0, self.in_flight - 1)
        if outcome in (Outcome.OK, Outcome.TIMEOUT):
            # Only real work is a latency sample: fast rejections would make a full endpoint look fast.
            self.ewma_s = peak_ewma(
                self.ewma_s, self.sampled_at, latency_s, now, policy.decay_s, policy.sample_weight
            )
            self.sampled_at = now
            self.samples += 1
        if outcome is Outcome.OK:
            self.consecutive_failures = 0
            self.ejections = 0
            self.ejected_until = 0.0
            return
        if outcome is Outcome.CANCELLED:
            return
        if outcome is Outcome.BUSY:
            self.rejections += 1
            hint = policy.busy_default_s if retry_after_s is None else retry_after_s
            self.busy_until = max(self.busy_until, now + min(max(hint, 0.0), policy.busy_cap_s))
            return
        self.failures += 1
        if outcome is not Outcome.UNREACHABLE:
            self.consecutive_failures = 0  # it answered: it is reachable
            return
        self.consecutive_failures += 1
        if self.consecutive_failures >= policy.eject_after:
            self.eject(now, policy, rng)

    def eject(self, now: float, policy: BalancerPolicy, rng: random.Random) -> None:
        """Leave this endpoint out for the next ejection delay (no-op while it is out already)."""
        if not self.ejected(now):
            self.ejected_until = now + ejection_delay(self.ejections, policy, rng)
            self.ejections += 1


def ejection_delay(ejections: int, policy: BalancerPolicy, rng: random.Random) -> float:
    """How long an endpoint stays out after `ejections` earlier ejections in a row (capped, jittered)."""
    return policy.eject_backoff.delay(ejections, rng.random)


def load(stats: EndpointStats, now: float, policy: BalancerPolicy) -> float:
    """p2c's cost: (in-flight + 1) × max(peak-EWMA latency, floor), or the server's reported wait
    plus that latency when larger, divided by weight / 100.

    Below the floor latencies count as equal (jitter of a few ms on a trivial call says nothing
    about an endpoint) and in-flight counts alone decide, as in least-request balancing.
    """
    if stats.samples == 0:
        cost = 0.0 if stats.in_flight == 0 else UNSAMPLED_PENALTY_S
        cost *= stats.in_flight + 1
    else:
        latency = max(stats.latency(now, policy), policy.latency_floor_s)
        # The server's own predicted wait covers every client's queued work, not just ours.
        cost = max(latency * (stats.in_flight + 1), stats.wait_left(now) + latency)
    if stats.weight > 0:
        cost /= stats.weight / 100.0
    return cost


def in_panic(stats: Collection[EndpointStats], now: float, threshold: float) -> bool:
    """True when fewer than `threshold` of the endpoints are available (not ejected)."""
    if not stats:
        return False
    available = sum(1 for s in stats if not s.ejected(now))
    return available < threshold * len(stats)


def p2c(
    candidates: Sequence[EndpointStats], rng: random.Random, now: float, policy: BalancerPolicy
) -> EndpointStats:
    """Power of two choices: the cheaper of two random candidates, or the other one when it is
    idle and was not picked for `probe_after_s` (to refresh its estimate)."""
    if len(candidates) == 1:
        return candidates[0]
    n = len(candidates)
    i, j = rng.randrange(n), rng.randrange(n - 1)
    first, second = candidates[i], candidates[j + 1 if j >= i else j]
    if load(first, now, policy) > load(second, now, policy):
        first, second = second, first
    if second.in_flight == 0 and now - second.last_pick > policy.probe_after_s:
        return second
    return first


@dataclass(frozen=True)
class Pick:
    """The endpoint to try next, how long to wait before trying it, and why."""

    endpoint: EndpointStats
    wait_s: float = 0.0  # > 0 when every candidate is busy: the earliest busy mark ends then
    panic: bool = False  # chosen among all endpoints because too many are ejected
    repeat: bool = False  # every candidate was tried already in this call


def pick(
    endpoints: Iterable[EndpointStats],
    rng: random.Random,
    now: float,
    *,
    exclude: Collection[str] = (),
    policy: BalancerPolicy | None = None,
) -> Pick | None:
    """Choose an endpoint for the next try, or None when there are none.

    Candidates: endpoints not ejected (all of them in panic mode), with weight > 0 (unless
    all are 0), not tried yet in this call (`exclude`, unless all were), not busy. When all
    candidates are busy, the one whose busy mark ends first, with the wait.
    """
    policy = policy or BalancerPolicy()
    known = list(endpoints)
    if not known:
        return None
    panic = in_panic(known, now, policy.panic_threshold)
    pool = known if panic else [s for s in known if not s.ejected(now)]
    pool = [s for s in pool if s.weight > 0] or pool
    untried = [s for s in pool if s.address not in exclude]
    repeat = not untried
    untried = untried or pool
    free = [s for s in untried if not s.busy(now)]
    if free:
        return Pick(p2c(free, rng, now, policy), 0.0, panic, repeat)
    soonest = min(untried, key=lambda s: s.busy_until)
    return Pick(soonest, soonest.busy_until - now, panic, repeat)


def attempt_delay(chosen: Pick, attempts: int, policy: RetryPolicy, rng: random.Random) -> float:
    """How long to wait before retry number `attempts` on `chosen`: the busy wait, or capped
    jittered backoff when it goes back to an endpoint already tried, else nothing."""
    if chosen.wait_s > 0:
        return chosen.wait_s
    if chosen.repeat:
        return policy.backoff.delay(max(0, attempts - 1), rng.random)
    return 0.0


class RetryBudget:
    """Token bucket bounding retries: each request deposits `ratio` tokens, each retry spends
    one, and `min_per_s` tokens trickle in regardless (the floor), up to `burst` tokens.

    In a long outage retries stay at about `ratio` of requests (plus the floor), so retries
    never multiply the load on a struggling service (Finagle's RetryBudget, gRPC's throttling).
    """

    def __init__(
        self, ratio: float = 0.2, min_per_s: float = 2.0, burst: float = 20.0, now: float = 0.0
    ) -> None:
        if ratio < 0 or min_per_s < 0 or burst < 1:
            raise ValueError("retry budget: ratio and min_per_s >= 0, burst >= 1")
        self.ratio = ratio
        self.min_per_s = min_per_s
        self.burst = burst
        self.tokens = burst
        self.stamp = now
        self.retries = 0
        self.refused = 0

    def available(self, now: float) -> float:
        """Tokens available at `now` (no change of state)."""
        return min(self.burst, self.tokens + max(0.0, now - self.stamp) * self.min_per_s)

    def _settle(self, now: float) -> None:
        self.tokens = self.available(now)
        self.stamp = max(self.stamp, now)

    def deposit(self, now: float) -> None:
        """A new request (not a retry) was made."""
        self._settle(now)
        self.tokens = min(self.burst, self.tokens + self.ratio)

    def withdraw(self, now: float) -> bool:
        """Spend a token for a retry; False (and nothing spent) when there is none."""
        self._settle(now)
        if self.tokens < 1.0:
            self.refused += 1
            return False
        self.tokens -= 1.0
        self.retries += 1
        return True


@dataclass(frozen=True)
class RetryDecision:
    """Whether to try again, after how long, and why (for logs and tests)."""

    retry: bool
    reason: str
    delay_s: float = 0.0
    charged: bool = True  # a retry that spends a token of the retry budget


RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})


def should_retry(
    code: grpc.StatusCode,
    executed: bool,
    attempts: int,
    deadline_left: float | None,
    budget: RetryBudget,
    now: float,
    *,
    idempotent: bool = False,
    wait_s: float = 0.0,
    work_s: float = 0.0,
    policy: RetryPolicy | None = None,
    unsent: int = 0,
) -> RetryDecision:
    """Retry a failed call? `attempts` tries were made, `unsent` of them never reached a server
    (the failed one too when `executed` is False for UNAVAILABLE); `wait_s` is how long until the next
    endpoint can take it (RetryInfo when all are busy, or backoff); `deadline_left` is the
    caller's remaining time (None: no deadline); `work_s` is what the server said one job takes
    (ErrorInfo "service_ms" of a refusal): a retry that would start too late to finish is not made.

    UNAVAILABLE is retried when the call did not run (connection-level, NOT_SERVING), or when it
    may have but is idempotent; RESOURCE_EXHAUSTED always (on another endpoint, or after the
    server's delay). Nothing else (INVALID_ARGUMENT, UNAUTHENTICATED, DEADLINE_EXCEEDED, …).
    A try that never left counts against `max_unsent` only, and spends no budget (it cost no
    server anything); the others count against `max_attempts` and the budget.
    """
    policy = policy or RetryPolicy()
    if code not in RETRYABLE:
        return RetryDecision(False, f"{code.name} is not retryable")
    if code is grpc.StatusCode.UNAVAILABLE and executed and not idempotent:
        return RetryDecision(False, "the call may have run and is not idempotent")
    never_sent = code is grpc.StatusCode.UNAVAILABLE and not executed
    if never_sent and unsent >= policy.max_unsent:
        return RetryDecision(False, f"{unsent} tries found no endpoint to send to")
    if not never_sent and attempts - unsent >= policy.max_attempts:
        return RetryDecision(False, f"{attempts - unsent} attempts made")
    if wait_s > policy.max_wait_s:
        return RetryDecision(False, f"next endpoint free in {wait_s:.2f}s, over {policy.max_wait_s:g}s")
    if deadline_left is not None and deadline_left - wait_s < max(policy.min_attempt_s, work_s):
        return RetryDecision(False, "no time left before the deadline")
    if never_sent:
        return RetryDecision(True, "not sent: another endpoint", max(0.0, wait_s), charged=False)
    if budget.available(now) < 1.0:
        return RetryDecision(False, "retry budget spent")
    return RetryDecision(True, "retry", max(0.0, wait_s))
