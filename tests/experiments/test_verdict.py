import math

import pytest

from cnncompress.experiments.verdict import FAILS, HOLDS, INCONCLUSIVE, Claim, decide, wilson


@pytest.mark.parametrize("low, high, claim, expected", [
    (-1.9, -0.5, Claim("above", -2), HOLDS),           # non-inferiority: whole interval above -2
    (-2.27, -0.50, Claim("above", -2), INCONCLUSIVE),  # the BWN case: the interval crosses the margin
    (-3.0, -2.5, Claim("above", -2), FAILS),
    (-0.20, 0.67, Claim("below", -0.5), FAILS),         # CP "costs accuracy": the whole interval is above -0.5
    (-0.20, 0.67, Claim("within", 1.0), HOLDS),
    (-0.20, 1.2, Claim("within", 1.0), INCONCLUSIVE),
    (1.1, 1.3, Claim("within", 1.0), FAILS),
    (23.0, 25.0, Claim("above", 20), HOLDS),
    (20.0, 20.0, Claim("above", 20), FAILS),            # on the edge is not inside an open region
])
def test_a_finding_is_decided_by_its_whole_interval(low, high, claim, expected):
    assert decide(low, high, claim) == expected


def test_no_interval_is_inconclusive_and_bad_claims_are_refused():
    assert decide(None, None, Claim("above", 0)) == INCONCLUSIVE
    assert decide(math.nan, 1.0, Claim("above", 0)) == INCONCLUSIVE
    with pytest.raises(ValueError):
        Claim("sideways", 1)
    with pytest.raises(ValueError):
        Claim("within", 0)
    with pytest.raises(ValueError):
        decide(2.0, 1.0, Claim("above", 0))


def test_wilson_interval_has_width_at_all_successes_and_matches_the_formula():
    low, high = wilson(25, 25)
    assert high == pytest.approx(1.0) and 0.85 < low < 0.88  # 25/25: [0.867, 1], not a zero-width interval
    low, high = wilson(45, 50)
    assert 0.78 < low < 0.79 and 0.95 < high < 0.96  # textbook value [0.786, 0.957]
    with pytest.raises(ValueError):
        wilson(3, 2)
