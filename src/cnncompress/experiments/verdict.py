"""How a pre-registered finding is decided: by its 95 % interval against the claim's region, never by a point.

A claim is a region of a measured quantity Δ (a difference in accuracy points, a ratio of sizes or latencies):
``above m`` (Δ > m: superiority when m >= 0, non-inferiority when m < 0), ``below m`` (Δ < m) or ``within m``
(|Δ| < m: equivalence). With the interval [low, high]:

- **holds** when the whole interval lies inside the region,
- **does not hold** when the whole interval lies outside it,
- **inconclusive** otherwise (the interval straddles the region's edge), and also when there is no interval.

This is the two-sided reading of a confidence interval used for superiority / non-inferiority / equivalence trials
(e.g. Piaggio et al., CONSORT extension for non-inferiority and equivalence trials, JAMA 2012, Fig. 1). A
deterministic quantity (bytes of a file) has a zero-width interval and is decided by its value.

``wilson`` is the Wilson score interval for a proportion k/n (Wilson 1927), which stays inside [0, 1] and has a
width at k = n, unlike the bootstrap of a sample that is all ones.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

HOLDS, FAILS, INCONCLUSIVE = "holds", "does not hold", "inconclusive"
DIRECTIONS = ("above", "below", "within")
Z95 = 1.959963984540054


@dataclass(frozen=True)
class Claim:
    """Δ above / below / within ``margin``."""
    direction: str
    margin: float

    def __post_init__(self):
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction {self.direction!r}: choose one of {', '.join(DIRECTIONS)}")
        if self.direction == "within" and not self.margin > 0:
            raise ValueError(f"within {self.margin}: an equivalence margin must be > 0")

    def region(self) -> tuple[float, float]:
        m = float(self.margin)
        return {"above": (m, math.inf), "below": (-math.inf, m), "within": (-m, m)}[self.direction]

    def text(self) -> str:
        return {"above": f"> {self.margin:g}", "below": f"< {self.margin:g}", "within": f"within ±{self.margin:g}"}[
            self.direction]


def decide(low: float | None, high: float | None, claim: Claim) -> str:
    """holds / does not hold / inconclusive for the interval [low, high] against ``claim``'s open region."""
    if low is None or high is None or any(math.isnan(v) for v in (low, high)):
        return INCONCLUSIVE
    if low > high:
        raise ValueError(f"interval [{low}, {high}] is reversed")
    lo, hi = claim.region()
    if lo < low and high < hi:
        return HOLDS
    if high <= lo or low >= hi:
        return FAILS
    return INCONCLUSIVE


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of the proportion successes/n (fractions in [0, 1])."""
    if n <= 0 or not 0 <= successes <= n:
        raise ValueError(f"wilson({successes}, {n}): need 0 <= successes <= n and n > 0")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)
