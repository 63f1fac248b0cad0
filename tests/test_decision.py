import numpy as np
import pytest
from scipy import stats

from asd.scoring.decision import decide, gamma_threshold
from asd.errors import AsdError


@pytest.mark.parametrize("shape, loc, scale", [(2.0, 0.0, 1.0), (5.0, 0.1, 0.02), (1.5, -3.0, 0.5)])
def test_gamma_threshold_recovers_the_true_quantile(shape, loc, scale):
    samples = stats.gamma.rvs(shape, loc=loc, scale=scale, size=2000, random_state=np.random.default_rng(0))
    true_q90 = stats.gamma.ppf(0.9, shape, loc=loc, scale=scale)
    threshold = gamma_threshold(samples, 0.9)
    spread = true_q90 - loc  # relative error measured on the distribution's own scale (loc may be negative)
    assert abs(threshold - true_q90) <= 0.05 * spread
    # About 10 % of the normal training scores lie above the threshold.
    assert 0.07 <= np.mean(samples > threshold) <= 0.13


def test_gamma_threshold_moves_with_a_shift_of_the_scores():
    samples = stats.gamma.rvs(3.0, scale=0.1, size=1000, random_state=np.random.default_rng(1))
    assert gamma_threshold(samples - 5.0) == pytest.approx(gamma_threshold(samples) - 5.0, abs=1e-3)


def test_higher_quantile_gives_higher_threshold():
    samples = stats.gamma.rvs(3.0, scale=0.1, size=1000, random_state=np.random.default_rng(2))
    assert gamma_threshold(samples, 0.5) < gamma_threshold(samples, 0.9) < gamma_threshold(samples, 0.99)


def test_constant_scores_give_that_constant():
    assert gamma_threshold(np.full(10, 0.25)) == 0.25


def test_bad_inputs_are_user_errors():
    with pytest.raises(AsdError, match="at least 2 finite"):
        gamma_threshold(np.array([0.1, np.nan, 0.3]), name="fan")
    with pytest.raises(AsdError, match="decision.quantile"):
        gamma_threshold(np.array([0.1, 0.2, 0.3]), 1.0)


def test_decide_is_strictly_greater_than():
    decisions = decide(np.array([0.1, 0.5, 0.50001, 2.0]), 0.5)
    np.testing.assert_array_equal(decisions, [0, 0, 1, 1])
    assert decisions.dtype.kind == "i"


def test_threshold_is_the_plain_scipy_gamma_fit():
    """The lazily imported scipy.stats gives exactly the baseline convention: ppf(q) of a free 3-parameter fit."""
    samples = stats.gamma.rvs(2.5, loc=0.2, scale=0.05, size=500, random_state=np.random.default_rng(3))
    assert gamma_threshold(samples, 0.9) == float(stats.gamma.ppf(0.9, *stats.gamma.fit(samples)))


def test_importing_decision_does_not_import_scipy_stats():
    """scipy.stats costs ~0.5 s to import; it is loaded only when a threshold is actually fitted."""
    import subprocess
    import sys

    code = "import sys, asd.scoring.decision; print('scipy.stats' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.strip() == "False"


def test_a_degenerate_gamma_fit_falls_back_to_the_empirical_quantile(caplog):
    # A tight bank's leave-one-out scores: the free-location fit degenerates (shape ~0.38, scale ~1.0, about
    # 250 times the scores' range) and would put the threshold near 1.09, far above every score.
    rng = np.random.default_rng(0)
    scores = 0.0105 + rng.exponential(0.003, size=40) ** rng.uniform(0.5, 2)
    threshold = gamma_threshold(scores, 0.9, name="fanA epoch 1")
    assert threshold == pytest.approx(np.quantile(scores, 0.9))
    assert "fanA epoch 1: the gamma fit" in caplog.text and "empirical quantile" in caplog.text
