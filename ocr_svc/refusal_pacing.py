"""Pacing of refusals: past a refusal rate, a refusal is answered after a short hold.

A client that ignores RetryInfo and calls again at once (ghz does) would otherwise turn every
refusal into the next request at full speed: thousands of images per second received, looked at
and refused, on the cores the workers need. A token bucket lets refusals out at once while they
are few; past it, each refused call is held (bounded by its deadline and `max_hold_s`) before it
is answered, which caps such a client at one call per hold per connection slot it has. A held
call is looked at again when its hold ends and admitted if there is room by then.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PacingPolicy:
    """Refusals per second let out at once (`rate_per_s`, `burst`), and how long others wait."""

    rate_per_s: float = 5.0
    burst: float = 5.0
    max_hold_s: float = 2.0
    max_held: int = 1024  # beyond this many held calls, refuse at once (holding costs memory)
    margin_s: float = 0.05  # answer this long before the caller's deadline


class RefusalPacer:
    """The token bucket and the count of calls held now (time passed in by the caller)."""

    def __init__(self, policy: PacingPolicy | None = None, now: float = 0.0) -> None:
        self.policy = policy or PacingPolicy()
        self.tokens = self.policy.burst
        self.stamp = now
        self.held = 0
        self.total_held = 0

    def hold_s(self, now: float, time_remaining: float | None) -> float:
        """How long to hold the refusal about to be sent (0: send it now). Spends a token if any."""
        p = self.policy
        self.tokens = min(p.burst, self.tokens + max(0.0, now - self.stamp) * p.rate_per_s)
        self.stamp = max(self.stamp, now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        if self.held >= p.max_held:
            return 0.0
        hold = p.max_hold_s if time_remaining is None else min(p.max_hold_s, time_remaining - p.margin_s)
        return max(0.0, hold)
