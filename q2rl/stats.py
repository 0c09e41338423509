"""Small statistics the learner, the session and `q2rl deploy` share: success rates with their uncertainty.

    lo, hi = wilson_interval(successes=36, n=40)        # 95 % Wilson score interval of 36/40
    wilson_lower(10, 10) < wilson_lower(36, 40)         # 0.72 < 0.77: 36/40 is the safer bet

A window of 10 evaluation episodes at 100 % and one of 40 at 90 % have raw rates that rank them the wrong way
round for deployment: the Wilson lower bound ranks by what the evidence supports, not by the luckiest draw.
"""

from __future__ import annotations

import math

Z95 = 1.959963984540054  # the two-sided 95 % normal quantile


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a success rate (successes out of n); (0, 1) when n is 0."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def wilson_lower(successes: int, n: int, z: float = Z95) -> float:
    """The lower end of `wilson_interval`: the success rate the evidence supports at 95 % (one figure to rank by)."""
    return wilson_interval(successes, n, z)[0]


def format_rate(successes: int, n: int) -> str:
    """'36/40 = 90% (95% CI 77-96%)'."""
    lo, hi = wilson_interval(successes, n)
    rate = successes / n if n else 0.0
    return f"{successes}/{n} = {100 * rate:.0f}% (95% CI {100 * lo:.0f}-{100 * hi:.0f}%)"
