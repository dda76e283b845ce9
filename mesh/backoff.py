"""Capped exponential backoff with jitter, as a pure function of the attempt number and RNG."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """Delays grow base × factor**attempt up to cap; jitter shaves up to that fraction off.

    With the defaults the waits are about 0.1, 0.2, 0.4, 0.8, then between 0.75 and 1.5 s for
    ever, so a retry loop notices a recovered etcd within 1.5 s plus one call.
    """

    base: float = 0.1
    factor: float = 2.0
    cap: float = 1.5
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if self.base <= 0 or self.cap < self.base or self.factor < 1:
            raise ValueError(f"bad backoff {self!r}: need 0 < base <= cap and factor >= 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"bad backoff {self!r}: jitter must be within [0, 1]")

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        """Seconds to wait before retry number `attempt` (0 for the first retry)."""
        return backoff_delay(attempt, self, rand)


def backoff_delay(attempt: int, policy: Backoff, rand: Callable[[], float]) -> float:
    """min(cap, base × factor**attempt) × (1 − jitter × r), r = rand() in [0, 1).

    Never more than `cap`, never less than (1 − jitter) × the capped delay, and never raises
    for large attempt numbers (the exponent is clamped before it can overflow).
    """
    attempt = max(0, attempt)
    if policy.factor > 1 and attempt >= math.log(policy.cap / policy.base, policy.factor):
        raw = policy.cap  # also keeps factor**attempt from overflowing for huge attempts
    else:
        raw = min(policy.cap, policy.base * policy.factor**attempt)
    r = min(max(rand(), 0.0), 1.0)
    return raw * (1.0 - policy.jitter * r)
