"""Bootstrap spread of the official score: the vectorised ROC areas equal section_metrics' sklearn numbers,
and the spread behaves as a bootstrap should."""


import numpy as np
import pytest

from asd.evaluation.metrics import (
    AlignedSection,
    bootstrap_indices,
    bootstrap_official_score,
    official_score,
    resampled_section_metrics,
    section_metrics,
)


def synthetic_section(rng: np.random.Generator, *, per_group: int, shift: float = 1.0,
                      decimals: int | None = None) -> AlignedSection:
    """``per_group`` clips per (domain, normal/anomaly); anomalies score ``shift`` higher on average."""
    label = np.repeat([0, 0, 1, 1], per_group)
    score = rng.standard_normal(4 * per_group) + shift * label
    return AlignedSection(label=label, domain=np.repeat(["source", "target", "source", "target"], per_group),
                          score=score if decimals is None else np.round(score, decimals), decision=None)


def picked(section: AlignedSection, rows: np.ndarray) -> AlignedSection:
    return AlignedSection(section.label[rows], section.domain[rows], section.score[rows], None)


def test_resampled_metrics_equal_section_metrics_with_ties():
    rng = np.random.default_rng(1)
    section = synthetic_section(rng, per_group=12, decimals=1)  # one decimal: normals tie with anomalies
    indices = np.vstack([np.arange(len(section.label)), bootstrap_indices(section, resamples=40, rng=rng)])
    vectorised = resampled_section_metrics(section, indices)
    for row, rows in enumerate(indices):
        expected = section_metrics(picked(section, rows))
        for key, values in vectorised.items():
            assert values[row] == pytest.approx(expected[key], abs=1e-12), (row, key)


def test_bootstrap_equals_explicit_resamples():
    sections = [synthetic_section(np.random.default_rng(seed), per_group=8) for seed in range(3)]
    rng = np.random.default_rng(5)
    indices = [bootstrap_indices(section, resamples=60, rng=rng) for section in sections]
    explicit = [official_score([section_metrics(picked(section, rows[r])) for section, rows in zip(sections, indices)])
                for r in range(60)]
    result = bootstrap_official_score(sections, resamples=60, seed=5)
    assert result["mean"] == pytest.approx(np.mean(explicit), abs=1e-12)
    assert result["sd"] == pytest.approx(np.std(explicit, ddof=1), abs=1e-12)
    assert result["official_score"] == official_score([section_metrics(section) for section in sections])


def test_indices_stay_in_their_group():
    section = synthetic_section(np.random.default_rng(0), per_group=5)
    indices = bootstrap_indices(section, resamples=200, rng=np.random.default_rng(0))
    assert (section.label[indices] == section.label).all() and (section.domain[indices] == section.domain).all()
    assert len(np.unique(indices[:, 0])) == 5  # drawn from all five source normals


def test_sd_shrinks_like_one_over_sqrt_n():
    """Each clip four times: the same empirical distribution from 4x the clips, so the sd halves."""
    sections = [synthetic_section(np.random.default_rng(seed), per_group=25) for seed in range(3)]
    quadrupled = [picked(section, np.repeat(np.arange(len(section.label)), 4)) for section in sections]
    small = bootstrap_official_score(sections, resamples=2000, seed=0)
    large = bootstrap_official_score(quadrupled, resamples=2000, seed=0)
    assert large["official_score"] == pytest.approx(small["official_score"], abs=1e-12)
    assert 0.02 < small["sd"] < 0.06  # 100 clips per machine, AUCs about 0.75
    assert small["sd"] / large["sd"] == pytest.approx(2.0, rel=0.1)


def test_mean_near_point_estimate():
    sections = [synthetic_section(np.random.default_rng(seed), per_group=50) for seed in range(3)]
    result = bootstrap_official_score(sections)
    assert abs(result["mean"] - result["official_score"]) < 0.2 * result["sd"]
    assert result["percentile_2.5"] < result["official_score"] < result["percentile_97.5"]


def test_deterministic_for_a_seed():
    sections = [synthetic_section(np.random.default_rng(seed), per_group=10) for seed in range(3)]
    assert bootstrap_official_score(sections, seed=3) == bootstrap_official_score(sections, seed=3)
    assert bootstrap_official_score(sections, seed=3)["sd"] != bootstrap_official_score(sections, seed=4)["sd"]


def test_perfect_separation_has_no_spread():
    sections = [synthetic_section(np.random.default_rng(seed), per_group=10, shift=100.0) for seed in range(3)]
    result = bootstrap_official_score(sections, resamples=200)
    assert result["official_score"] == result["mean"] == 1.0
    assert result["sd"] == 0.0


def test_roc_auc_equals_sklearn_with_ties_and_partial_area():
    from sklearn.metrics import roc_auc_score

    from asd.evaluation.metrics import roc_auc

    rng = np.random.default_rng(0)
    for _ in range(200):
        clips = int(rng.integers(5, 300))
        label = (rng.random(clips) < rng.uniform(0.1, 0.9)).astype(int)
        if label.min() == label.max():
            continue
        score = np.round(rng.normal(size=clips) + label * rng.uniform(0, 2), int(rng.integers(0, 3)))  # many ties
        for max_fpr in (None, 0.1):
            assert roc_auc(label, score, max_fpr=max_fpr) == pytest.approx(
                roc_auc_score(label, score, max_fpr=max_fpr), abs=1e-12)
