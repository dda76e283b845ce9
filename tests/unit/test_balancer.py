"""Balancing decisions without sockets: peak EWMA, p2c, ejection, panic mode, retries and budget."""

from __future__ import annotations

import random
from collections import Counter

import grpc
import pytest

from mesh.backoff import Backoff
from mesh.picking import (
    UNSAMPLED_PENALTY_S,
    BalancerPolicy,
    EndpointStats,
    Outcome,
    Pick,
    RetryBudget,
    RetryPolicy,
    attempt_delay,
    decayed,
    executed_hint,
    in_panic,
    is_local_limit,
    load,
    outcome_of,
    peak_ewma,
    pick,
    should_retry,
)

POLICY = BalancerPolicy(eject_backoff=Backoff(base=1.0, factor=2.0, cap=8.0, jitter=0.0))
NO_DECAY = BalancerPolicy(decay_s=1e12)
C = grpc.StatusCode


def sampled(address: str, ewma_s: float, in_flight: int = 0, **kw: object) -> EndpointStats:
    stats = EndpointStats(
        address, ewma_s=ewma_s, samples=1, in_flight=in_flight, last_pick=0.0, sampled_at=1.0
    )
    for key, value in kw.items():
        setattr(stats, key, value)
    return stats


def picks(
    endpoints: list[EndpointStats],
    n: int,
    now: float = 1.0,
    seed: int = 1,
    exclude: frozenset[str] | set[str] = frozenset(),
    policy: BalancerPolicy = POLICY,
) -> Counter[str]:
    rng = random.Random(seed)
    counts: Counter[str] = Counter()
    for _ in range(n):
        chosen = pick(endpoints, rng, now, exclude=exclude, policy=policy)
        assert chosen is not None
        counts[chosen.endpoint.address] += 1
    return counts


# -- peak EWMA ------------------------------------------------------------------------------


def test_ewma_jumps_up_at_once_on_a_slow_sample() -> None:
    assert peak_ewma(0.010, 0.0, 0.400, 0.001, 10.0, 0.2) == 0.400


def test_ewma_comes_down_with_fast_samples() -> None:
    assert peak_ewma(0.400, 0.0, 0.100, 0.0, 10.0, 0.2) == pytest.approx(0.340)  # 20 % of the way
    value = 0.400
    for i in range(20):  # a burst of fast answers forgets the spike
        value = peak_ewma(value, i * 0.01, 0.010, (i + 1) * 0.01, 10.0, 0.2)
    assert value < 0.02


def test_ewma_decays_with_time_when_there_are_no_samples() -> None:
    stats = sampled("slow", 0.400, sampled_at=0.0)
    assert stats.latency(0.0, POLICY) == pytest.approx(0.400)
    assert stats.latency(10.0, POLICY) == pytest.approx(0.400 * 0.3679, rel=1e-3)  # e^-1 after decay_s
    assert decayed(0.4, 0.0, 30.0, 10.0) == pytest.approx(0.4 * 0.0498, rel=1e-3)
    # After a long idle time a normal answer is taken as it is (the old spike is forgotten).
    assert peak_ewma(0.400, 0.0, 0.050, 60.0, 10.0, 0.2) == pytest.approx(0.050)


def test_slow_endpoint_is_tried_again_once_its_estimate_decays() -> None:
    fast, slow = sampled("fast", 0.1, in_flight=3), sampled("slow", 0.5, sampled_at=0.0)
    assert picks([fast, slow], 50, now=0.5) == Counter({"fast": 50})
    # 0.5 s decays to below 0.4 s (the fast one's cost with 3 in flight) after 10 ln(1.25) = 2.2 s.
    assert picks([fast, slow], 50, now=2.5) == Counter({"slow": 50})


def test_endpoint_records_latency_only_for_real_work() -> None:
    rng = random.Random(0)
    stats = EndpointStats("a")
    stats.begin(0.0)
    stats.end(Outcome.OK, 0.2, 0.2, POLICY, rng)
    assert stats.ewma_s == pytest.approx(0.2) and stats.in_flight == 0
    stats.begin(0.3)
    stats.end(Outcome.BUSY, 0.301, 0.001, POLICY, rng, retry_after_s=0.5)
    assert stats.ewma_s == pytest.approx(0.2), "a fast rejection must not make a full endpoint look fast"
    assert stats.busy(0.7) and not stats.busy(0.81)
    stats.begin(1.0)
    stats.end(Outcome.TIMEOUT, 4.0, 3.0, POLICY, rng)
    assert stats.ewma_s == pytest.approx(3.0), "a timeout is a (lower bound) latency sample"
    assert stats.requests == 3 and stats.rejections == 1 and stats.failures == 1


# -- p2c --------------------------------------------------------------------------------------


def test_load_is_in_flight_plus_one_times_ewma_over_weight() -> None:
    assert load(sampled("a", 0.1, in_flight=3), 1.0, NO_DECAY) == pytest.approx(0.4)
    assert load(sampled("a", 0.1, in_flight=3, weight=200), 1.0, NO_DECAY) == pytest.approx(0.2)
    assert load(EndpointStats("new"), 1.0, NO_DECAY) == 0.0  # unknown and idle: try it
    assert load(EndpointStats("new", in_flight=1), 1.0, NO_DECAY) == 2 * UNSAMPLED_PENALTY_S  # one at a time
    # Below the floor latencies are equal and only in-flight counts (least-request).
    assert load(sampled("a", 0.001), 1.0, NO_DECAY) == load(sampled("b", 0.009), 1.0, NO_DECAY) == 0.01


def test_p2c_prefers_the_faster_endpoint() -> None:
    counts = picks([sampled("fast", 0.05), sampled("slow", 0.45)], 1000)
    assert counts["fast"] == 1000


def test_p2c_prefers_the_less_loaded_endpoint() -> None:
    counts = picks([sampled("busy", 0.1, in_flight=5), sampled("idle", 0.1, in_flight=1)], 1000)
    assert counts["idle"] == 1000


def test_p2c_spreads_equal_endpoints_and_three_way() -> None:
    counts = picks([sampled(a, 0.1) for a in "abc"], 3000)
    for address in "abc":
        assert 800 < counts[address] < 1200, counts
    # With 3 endpoints the worst one loses every comparison it is drawn into.
    counts = picks([sampled("a", 0.1), sampled("b", 0.1), sampled("worst", 0.9)], 3000)
    assert counts["worst"] == 0


def test_p2c_spreads_by_in_flight_when_calls_stay_open() -> None:
    # A closed loop: each pick adds one in-flight call, so equal endpoints fill evenly.
    endpoints = [sampled("a", 0.1), sampled("b", 0.1)]
    rng = random.Random(3)
    for _ in range(8):
        chosen = pick(endpoints, rng, 1.0, policy=POLICY)
        assert chosen is not None
        chosen.endpoint.begin(1.0)
    assert [e.in_flight for e in endpoints] == [4, 4]


def test_idle_loser_is_probed_after_a_while() -> None:
    slow = sampled("slow", 0.5, last_pick=0.0)
    fast = sampled("fast", 0.05, last_pick=0.0)
    assert picks([fast, slow], 50, now=1.0)["slow"] == 0
    chosen = pick([fast, slow], random.Random(0), POLICY.probe_after_s + 0.5, policy=POLICY)
    assert chosen is not None and chosen.endpoint is slow
    slow.in_flight = 1  # a probe is running: no second one
    chosen = pick([fast, slow], random.Random(0), POLICY.probe_after_s + 0.5, policy=POLICY)
    assert chosen is not None and chosen.endpoint is fast


def test_weight_zero_is_skipped_unless_all_are_zero() -> None:
    assert picks([sampled("a", 0.5), sampled("b", 0.01, weight=0)], 100)["b"] == 0
    assert picks([sampled("a", 0.5, weight=0), sampled("b", 0.01, weight=0)], 100)["b"] == 100


def test_excluded_and_busy_endpoints_are_avoided() -> None:
    a, b = sampled("a", 0.01), sampled("b", 0.5)
    assert picks([a, b], 100, exclude={"a"})["b"] == 100
    b.busy_until = 3.0
    chosen = pick([a, b], random.Random(0), 1.0, exclude={"a"}, policy=POLICY)
    # b is the only untried one but busy for 2 s more: a was tried, so b after its delay.
    assert chosen == Pick(b, 2.0, False, False)
    a.busy_until = 1.5
    chosen = pick([a, b], random.Random(0), 1.0, exclude={"a", "b"}, policy=POLICY)
    assert (
        chosen is not None and chosen.endpoint is a and chosen.wait_s == pytest.approx(0.5) and chosen.repeat
    )


def test_no_endpoints_no_pick() -> None:
    assert pick([], random.Random(0), 0.0) is None


# -- ejection -----------------------------------------------------------------------------------


def fail(stats: EndpointStats, now: float, outcome: Outcome = Outcome.UNREACHABLE) -> None:
    stats.begin(now)
    stats.end(outcome, now, 0.001, POLICY, random.Random(0))


def test_ejection_after_consecutive_connection_failures_with_growing_backoff() -> None:
    stats = EndpointStats("a")
    fail(stats, 0.0)
    assert not stats.ejected(0.0)  # one failure is not enough
    fail(stats, 0.1)
    assert stats.ejected(0.1) and stats.ejected_until == pytest.approx(1.1)
    fail(stats, 0.2)  # failures while ejected (calls already in flight) do not extend it
    assert stats.ejected_until == pytest.approx(1.1)
    assert not stats.ejected(1.2), "re-admitted after the backoff"
    fail(stats, 1.2)  # one more failure after re-admission: out again, for twice as long
    assert stats.ejected_until == pytest.approx(3.2)
    fail(stats, 3.3)
    assert stats.ejected_until == pytest.approx(7.3)
    for now in (7.4, 15.5, 23.6):
        fail(stats, now)
    assert stats.ejected_until == pytest.approx(23.6 + 8.0), "capped"
    stats.begin(40.0)
    stats.end(Outcome.OK, 40.1, 0.1, POLICY, random.Random(0))
    assert stats.consecutive_failures == 0 and stats.ejections == 0 and not stats.ejected(40.1)
    fail(stats, 41.0)
    assert not stats.ejected(41.0), "a success starts the count again"


def test_answers_that_are_not_connection_failures_do_not_eject() -> None:
    stats = EndpointStats("a")
    for i, outcome in enumerate([Outcome.BUSY, Outcome.ERROR, Outcome.TIMEOUT, Outcome.CANCELLED] * 3):
        fail(stats, float(i), outcome)
    assert not stats.ejected(12.0) and stats.ejections == 0
    fail(stats, 13.0)
    fail(stats, 13.1, Outcome.ERROR)  # it answered: reachable again
    fail(stats, 13.2)
    assert not stats.ejected(13.2)


def test_ejected_endpoint_is_not_picked() -> None:
    a, b = sampled("a", 0.01), sampled("b", 0.5)
    fail(a, 0.5)
    fail(a, 0.5)
    assert picks([a, b], 100, now=1.0)["b"] == 100
    assert picks([a, b], 100, now=2.0)["a"] == 100, "re-admitted and faster"


def test_ejection_backoff_has_jitter_from_the_rng() -> None:
    policy = BalancerPolicy(eject_backoff=Backoff(base=1.0, factor=2.0, cap=30.0, jitter=0.5))
    until = set()
    for seed in range(5):
        stats = EndpointStats("a")
        for _ in range(2):
            stats.begin(0.0)
            stats.end(Outcome.UNREACHABLE, 0.0, 0.0, policy, random.Random(seed))
        until.add(round(stats.ejected_until, 6))
        assert 0.5 <= stats.ejected_until <= 1.0
    assert len(until) > 1


# -- panic mode -------------------------------------------------------------------------------


def eject(stats: EndpointStats) -> EndpointStats:
    stats.ejected_until = 100.0
    return stats


def test_panic_when_fewer_than_threshold_are_available() -> None:
    four = [sampled(a, 0.1) for a in "abcd"]
    assert not in_panic(four, 1.0, 0.5)
    eject(four[0])
    eject(four[1])
    assert not in_panic(four, 1.0, 0.5), "half available is not panic (Envoy: healthy < 50 %)"
    eject(four[2])
    assert in_panic(four, 1.0, 0.5)
    assert not in_panic(four, 200.0, 0.5), "backoffs ended"
    assert not in_panic([], 1.0, 0.5)


def test_panic_mode_spreads_over_all_endpoints() -> None:
    endpoints = [eject(sampled(a, 0.1)) for a in "abc"] + [sampled("d", 0.1)]
    # Not in panic with threshold 0.25: only d.
    assert picks(endpoints, 300, policy=BalancerPolicy(panic_threshold=0.25)) == Counter({"d": 300})
    counts = picks(endpoints, 3000)
    assert set(counts) == set("abcd"), counts
    for address in "abcd":
        assert 500 < counts[address] < 1000, counts
    chosen = pick(endpoints, random.Random(0), 1.0, policy=POLICY)
    assert chosen is not None and chosen.panic


def test_all_ejected_still_picks_rather_than_failing() -> None:
    endpoints = [eject(sampled("a", 0.1)), eject(sampled("b", 0.1))]
    assert sum(picks(endpoints, 100).values()) == 100


# -- retries --------------------------------------------------------------------------------


def budget() -> RetryBudget:
    return RetryBudget(ratio=0.2, min_per_s=0.0, burst=10.0)


@pytest.mark.parametrize(
    ("code", "executed", "idempotent", "expected"),
    [
        (C.UNAVAILABLE, False, False, True),  # never reached the server
        (C.UNAVAILABLE, True, False, False),  # may have run: only if it is safe to run twice
        (C.UNAVAILABLE, True, True, True),
        (C.RESOURCE_EXHAUSTED, True, False, True),  # rejected before any work
        (C.INVALID_ARGUMENT, False, True, False),
        (C.UNAUTHENTICATED, False, True, False),
        (C.DEADLINE_EXCEEDED, False, True, False),
        (C.INTERNAL, True, True, False),
        (C.CANCELLED, False, True, False),
    ],
)
def test_which_codes_are_retried(
    code: grpc.StatusCode, executed: bool, idempotent: bool, expected: bool
) -> None:
    decision = should_retry(code, executed, 1, 5.0, budget(), 0.0, idempotent=idempotent)
    assert decision.retry is expected, decision.reason


def test_retries_stop_at_max_attempts_deadline_and_long_waits() -> None:
    policy = RetryPolicy(max_attempts=3, max_wait_s=2.0)
    assert should_retry(C.UNAVAILABLE, True, 2, 5.0, budget(), 0.0, idempotent=True, policy=policy).retry
    assert not should_retry(C.UNAVAILABLE, True, 3, 5.0, budget(), 0.0, idempotent=True, policy=policy).retry
    assert not should_retry(C.UNAVAILABLE, False, 1, 0.001, budget(), 0.0, policy=policy).retry
    assert should_retry(C.UNAVAILABLE, False, 1, None, budget(), 0.0, policy=policy).retry  # no deadline
    # RetryInfo: wait when no other endpoint is free, if the deadline allows it.
    decision = should_retry(C.RESOURCE_EXHAUSTED, True, 1, 5.0, budget(), 0.0, wait_s=0.8, policy=policy)
    assert decision.retry and decision.delay_s == 0.8
    assert not should_retry(
        C.RESOURCE_EXHAUSTED, True, 1, 0.5, budget(), 0.0, wait_s=0.8, policy=policy
    ).retry
    assert not should_retry(
        C.RESOURCE_EXHAUSTED, True, 1, 60.0, budget(), 0.0, wait_s=3.0, policy=policy
    ).retry


def test_attempt_delay_waits_for_busy_or_backs_off_on_the_same_endpoint() -> None:
    e = EndpointStats("a")
    policy = RetryPolicy(backoff=Backoff(base=0.05, factor=2.0, cap=1.0, jitter=0.0))
    rng = random.Random(0)
    assert attempt_delay(Pick(e), 1, policy, rng) == 0.0  # another endpoint: at once
    assert attempt_delay(Pick(e, wait_s=0.7), 1, policy, rng) == 0.7  # RetryInfo
    assert attempt_delay(Pick(e, repeat=True), 1, policy, rng) == pytest.approx(0.05)
    assert attempt_delay(Pick(e, repeat=True), 3, policy, rng) == pytest.approx(0.2)
    assert attempt_delay(Pick(e, repeat=True), 30, policy, rng) == pytest.approx(1.0)


def test_retry_budget_is_a_share_of_requests_plus_a_floor() -> None:
    b = RetryBudget(ratio=0.2, min_per_s=0.0, burst=5.0)
    assert sum(b.withdraw(0.0) for _ in range(10)) == 5  # the initial burst
    assert not should_retry(C.RESOURCE_EXHAUSTED, True, 1, 5.0, b, 0.0).retry
    assert not should_retry(C.UNAVAILABLE, True, 1, 5.0, b, 0.0, idempotent=True).retry
    # A try that never left (connection refused) cost no server anything: not charged.
    free = should_retry(C.UNAVAILABLE, False, 1, 5.0, b, 0.0, unsent=1)
    assert free.retry and not free.charged
    for _ in range(100):
        b.deposit(0.0)
    assert sum(b.withdraw(0.0) for _ in range(100)) == 5, "capped at burst"
    retries = 0
    for _ in range(1000):  # every request fails: retries stay at 20 % of requests
        b.deposit(0.0)
        retries += b.withdraw(0.0)
    assert retries == 200
    floor = RetryBudget(ratio=0.0, min_per_s=2.0, burst=3.0)
    assert sum(floor.withdraw(0.0) for _ in range(10)) == 3
    assert not floor.withdraw(0.1)
    assert floor.available(1.0) == pytest.approx(2.0)
    assert sum(floor.withdraw(10.0) for _ in range(10)) == 3, "the floor refills up to burst"
    assert floor.retries == 6 and floor.refused > 0


# -- classifying failures -----------------------------------------------------------------------


def test_outcomes_and_executed_hints() -> None:
    assert outcome_of(C.UNAVAILABLE) is Outcome.UNREACHABLE
    assert outcome_of(C.RESOURCE_EXHAUSTED) is Outcome.BUSY
    assert outcome_of(C.DEADLINE_EXCEEDED) is Outcome.TIMEOUT
    assert outcome_of(C.INVALID_ARGUMENT) is Outcome.ERROR
    assert outcome_of(C.UNAVAILABLE, "NOT_SERVING") is Outcome.UNREACHABLE
    assert outcome_of(C.UNAVAILABLE, "WORKER_CRASHED") is Outcome.ERROR  # the image, not the instance
    refused = (
        "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: "
        "Failed to connect to remote host: Connection refused"
    )
    assert not executed_hint(C.UNAVAILABLE, refused)
    assert not executed_hint(C.UNAVAILABLE, "OCR instance is not serving", "NOT_SERVING")
    assert executed_hint(C.UNAVAILABLE, "Socket closed")
    assert executed_hint(C.UNAVAILABLE, "worker crashed", "WORKER_CRASHED")
    assert executed_hint(C.INTERNAL, "")
    assert is_local_limit("Received message larger than max (70000000 vs. 67108864)")
    assert not is_local_limit("OCR instance is at capacity")


def test_tries_that_never_left_do_not_use_up_attempts_and_stop_at_max_unsent() -> None:
    policy = RetryPolicy(max_attempts=2, max_unsent=3)
    # Two busy refusals and one refused connection: the connection failure still goes elsewhere.
    assert should_retry(C.UNAVAILABLE, False, 3, 5.0, budget(), 0.0, policy=policy, unsent=1).retry
    # ... but a third served try is over max_attempts (3 tries, 1 of them unsent = 2 served).
    assert not should_retry(C.RESOURCE_EXHAUSTED, True, 3, 5.0, budget(), 0.0, policy=policy, unsent=1).retry
    assert not should_retry(C.UNAVAILABLE, False, 3, 5.0, budget(), 0.0, policy=policy, unsent=3).retry
    assert not should_retry(C.UNAVAILABLE, False, 1, 0.001, budget(), 0.0, policy=policy, unsent=1).retry


def test_eject_leaves_an_endpoint_out_at_once() -> None:
    e, policy, rng = EndpointStats("a"), BalancerPolicy(), random.Random(0)
    e.eject(10.0, policy, rng)
    assert e.ejected(10.5) and e.ejections == 1
    e.eject(10.6, policy, rng)  # already out: the delay does not grow
    assert e.ejections == 1
