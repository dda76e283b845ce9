"""Unit tests for the capped, jittered retry backoff used by registration and discovery."""

from __future__ import annotations

import pytest

from mesh.backoff import Backoff, backoff_delay


def test_grows_then_caps_without_jitter() -> None:
    policy = Backoff(base=0.1, factor=2.0, cap=1.5, jitter=0.0)
    delays = [backoff_delay(n, policy, lambda: 0.5) for n in range(8)]
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.5, 1.5, 1.5, 1.5])


def test_jitter_stays_within_bounds() -> None:
    policy = Backoff(base=0.1, factor=2.0, cap=2.0, jitter=0.5)
    assert backoff_delay(10, policy, lambda: 0.0) == pytest.approx(2.0)
    assert backoff_delay(10, policy, lambda: 0.999999) == pytest.approx(1.0, abs=1e-5)
    assert backoff_delay(0, policy, lambda: 1.0) == pytest.approx(0.05)
    # A misbehaving RNG cannot push the delay outside [(1 - jitter) * d, d].
    assert backoff_delay(10, policy, lambda: 7.0) == pytest.approx(1.0)
    assert backoff_delay(10, policy, lambda: -3.0) == pytest.approx(2.0)


def test_never_exceeds_cap_and_survives_huge_attempts() -> None:
    policy = Backoff()
    values = iter([0.0, 0.3, 0.9] * 400)
    for attempt in range(0, 1200):
        assert 0 < policy.delay(attempt, lambda: next(values)) <= policy.cap
    assert backoff_delay(10**9, policy, lambda: 0.0) == policy.cap
    assert backoff_delay(-5, policy, lambda: 0.0) == policy.base


def test_constant_backoff_when_factor_is_one() -> None:
    policy = Backoff(base=0.5, factor=1.0, cap=2.0, jitter=0.0)
    assert backoff_delay(1000, policy, lambda: 0.0) == 0.5


@pytest.mark.parametrize(
    "kwargs",
    [{"base": 0}, {"base": 2.0, "cap": 1.0}, {"factor": 0.5}, {"jitter": 1.5}, {"jitter": -0.1}],
)
def test_rejects_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Backoff(**kwargs)
