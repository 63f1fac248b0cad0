"""Anomaly decisions (0/1) from a gamma fit of normal training scores, as the official baseline does.

Convention (matches the DCASE baseline ``fit_anomaly_score_distribution``): a three-parameter
``scipy.stats.gamma.fit`` (shape, loc, scale all free) on the raw leave-one-out scores of the
training clips, threshold = ``gamma.ppf(quantile, shape, loc, scale)``. Because the location is
fitted, non-positive scores (e.g. z-normalised ensemble scores) need no shifting: the fit moves
with the data. A clip is anomalous iff its score > the threshold.

On small or skewed banks the free-location fit can degenerate (shape far below 1, a scale many
times the data's range) and put the threshold far beyond every training score; then the
empirical quantile of the training scores is used instead, with a warning.
"""

from __future__ import annotations

import logging

import numpy as np

from asd.errors import AsdError

log = logging.getLogger(__name__)


def gamma_threshold(train_loo_scores: np.ndarray, quantile: float = 0.9, *, name: str = "training scores") -> float:
    """The ``quantile`` of a gamma distribution fitted to training leave-one-out scores [N]."""
    scores = np.asarray(train_loo_scores, dtype=np.float64)
    if scores.size < 2 or not np.all(np.isfinite(scores)):
        raise AsdError(
            f"{name}: the decision threshold needs at least 2 finite training leave-one-out scores, got "
            f"{scores.size} ({int(np.sum(~np.isfinite(scores)))} not finite); rerun the 'score' rule."
        )
    if not 0 < quantile < 1:
        raise AsdError(f"decision.quantile = {quantile}; set it strictly between 0 and 1 (default 0.9).")
    if np.ptp(scores) == 0:
        # A gamma fit is undefined on a constant sample; any score above the normal value is anomalous.
        return float(scores[0])
    # Imported here, not at module level: scipy.stats costs ~0.5 s to import, and importing
    # asd.scoring.decision (e.g. via asd.scoring.score) should stay cheap for callers that never fit a threshold.
    from scipy import stats

    shape, loc, scale = stats.gamma.fit(scores)
    threshold = float(stats.gamma.ppf(quantile, shape, loc=loc, scale=scale))
    if not np.isfinite(threshold):
        raise AsdError(
            f"{name}: the gamma fit of the training scores failed (shape {shape:.3g}, loc {loc:.3g}, "
            f"scale {scale:.3g}); inspect the scores or change decision.quantile."
        )
    if not scores.min() <= threshold <= scores.max() + np.ptp(scores):
        empirical = float(np.quantile(scores, quantile))
        log.warning("%s: the gamma fit (shape %.3g, loc %.3g, scale %.3g) puts the %g quantile at %.4g, outside "
                    "the training scores [%.4g, %.4g]; using their empirical quantile %.4g", name, shape, loc,
                    scale, quantile, threshold, scores.min(), scores.max(), empirical)
        return empirical
    return threshold


def decide(scores: np.ndarray, threshold: float) -> np.ndarray:
    """0/1 int decisions [Q]: 1 (anomalous) iff score > threshold."""
    return (np.asarray(scores) > threshold).astype(np.int64)
