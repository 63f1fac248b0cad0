"""Named scoring back-ends (asd.scoring.scorers) against direct reference computations with sklearn / numpy."""

import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.neighbors import NearestNeighbors

from asd.errors import AsdError
from asd.scoring.knn import DomainNormaliser, leave_one_out_scores, score_domains
from asd.scoring.scorers import METHODS, describe, mixup_clips, run_scorer, spherical_kmeans

SCORING = {"k": 1, "separate_domain_banks": True, "domain_normalisation": False}  # config.yaml's scoring section
CONFIG_SCORERS = {  # config.yaml's scorers section
    "knn": {"method": "knn"},
    "knn_domain_norm": {"method": "knn", "domain_normalisation": True},
    "knn_rescale": {"method": "knn_rescale", "k_ref": 4},
    "target_mixup": {"method": "target_mixup", "neighbours": 3, "weight": 0.5, "count": 100},
    "kmeans": {"method": "kmeans", "clusters": 16},
}
MIXUP = CONFIG_SCORERS["target_mixup"]


def nn(bank, queries, k):
    """sklearn's exact cosine k-NN: distances [Q, k] ascending, indices [Q, k]."""
    return NearestNeighbors(n_neighbors=k, metric="cosine", algorithm="brute").fit(bank).kneighbors(queries)


def nn1(bank, queries):
    return nn(bank, queries, 1)[0][:, 0]


def unit(rows):
    rows = np.asarray(rows, dtype=np.float64)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def make_banks(seed, n_source=40, n_target=6, dim=16, n_test=30):
    """Source and target clips around different centres (a domain shift), test clips from both and beyond."""
    rng = np.random.default_rng(seed)
    centre_s, centre_t = rng.standard_normal(dim) * 2, rng.standard_normal(dim) * 2
    source = centre_s + rng.standard_normal((n_source, dim))
    target = centre_t + rng.standard_normal((n_target, dim))
    test = np.concatenate([centre_s + 1.3 * rng.standard_normal((n_test // 3, dim)),
                           centre_t + 1.3 * rng.standard_normal((n_test // 3, dim)),
                           rng.standard_normal((n_test - 2 * (n_test // 3), dim)) * 3])
    return {"source": source, "target": target}, test


def tiny_banks():
    """6 source + 4 target 3-d clips and 5 test clips."""
    rng = np.random.default_rng(7)
    source = rng.standard_normal((6, 3)) + [2.0, 0.0, 0.0]
    target = rng.standard_normal((4, 3)) + [0.0, 2.0, 0.0]
    test = rng.standard_normal((5, 3)) + [1.0, 1.0, 0.5]
    return {"source": source, "target": target}, test


def partition(labels):
    return {frozenset(np.flatnonzero(labels == c)) for c in np.unique(labels)}


# ----------------------------------------------------------------------------- knn


@pytest.mark.parametrize("scoring", [
    SCORING,
    {"k": 3, "separate_domain_banks": True, "domain_normalisation": True},
    {"k": 2, "separate_domain_banks": False, "domain_normalisation": False},
])
def test_knn_is_the_paper_code_path(scoring):
    """{"method": "knn"} gives exactly what asd.scoring.knn's score_domains / leave_one_out_scores gave before scorers."""
    banks, test = make_banks(1)
    score, per_domain, loo = run_scorer({"method": "knn"}, banks, test, scoring=scoring, name="fanA")
    paper_banks = banks if scoring["separate_domain_banks"] else {"all": np.concatenate([banks["source"],
                                                                                        banks["target"]])}
    normaliser = (DomainNormaliser.fit(paper_banks, scoring["k"], name="fanA")
                  if scoring["domain_normalisation"] else None)
    expected_score, expected_domains = score_domains(test, paper_banks, scoring["k"], name="fanA",
                                                     normaliser=normaliser)
    expected_loo = leave_one_out_scores(paper_banks, scoring["k"], name="fanA", normaliser=normaliser)
    np.testing.assert_array_equal(score, expected_score)
    assert list(per_domain) == list(expected_domains) == list(paper_banks)
    assert list(loo) == list(expected_loo) == list(paper_banks)
    for domain in paper_banks:
        np.testing.assert_array_equal(per_domain[domain], expected_domains[domain])
        np.testing.assert_array_equal(loo[domain], expected_loo[domain])
    # And the unnormalised paper scorer is sklearn's cosine k-NN mean distance, min over the banks.
    if not scoring["domain_normalisation"]:
        expected = np.min([nn(bank, test, scoring["k"])[0].mean(axis=1) for bank in paper_banks.values()], axis=0)
        np.testing.assert_allclose(score, expected, rtol=0, atol=1e-6)


def test_knn_per_scorer_override_matches_hand_computation():
    """{"method": "knn", "k": 2, "domain_normalisation": True} overrides the scoring section: k = 2 mean cosine
    distance, each domain standardised by its bank's own leave-one-out mean/std (population), min over domains."""
    banks, test = make_banks(2)
    spec = {"method": "knn", "k": 2, "domain_normalisation": True}
    score, per_domain, loo = run_scorer(spec, banks, test, scoring=SCORING, name="fanA")
    default_score, _, default_loo = run_scorer({"method": "knn"}, banks, test, scoring=SCORING, name="fanA")
    assert not np.allclose(score, default_score)
    assert not np.allclose(loo["source"], default_loo["source"])

    k = 2
    own_loo = {d: np.array([nn(np.delete(bank, i, axis=0), bank[i:i + 1], k)[0].mean() for i in range(len(bank))])
               for d, bank in banks.items()}
    mean = {d: own_loo[d].mean() for d in banks}
    std = {d: own_loo[d].std() for d in banks}
    expected_domains = {d: (nn(bank, test, k)[0].mean(axis=1) - mean[d]) / std[d] for d, bank in banks.items()}
    expected_loo = {own: np.min([((own_loo[d] if d == own else nn(banks[d], banks[own], k)[0].mean(axis=1))
                                  - mean[d]) / std[d] for d in banks], axis=0) for own in banks}
    for d in banks:
        np.testing.assert_allclose(per_domain[d], expected_domains[d], rtol=0, atol=1e-4)
        np.testing.assert_allclose(loo[d], expected_loo[d], rtol=0, atol=1e-4)
    np.testing.assert_allclose(score, np.minimum(*expected_domains.values()), rtol=0, atol=1e-4)


# ----------------------------------------------------------------------------- knn_rescale


def rescaled(bank, query, k_ref):
    """Distance to the nearest bank clip / that clip's mean distance to its k_ref nearest other bank clips."""
    (distance,), (nearest,) = nn(bank, query[None], 1)
    reference = nn(np.delete(bank, nearest[0], axis=0), bank[nearest[0]][None], k_ref)[0].mean()
    return distance[0] / reference


def rescale_reference(banks, test, k_ref):
    per_domain = {d: np.array([rescaled(bank, q, k_ref) for q in test]) for d, bank in banks.items()}
    loo = {own: np.min([[rescaled(np.delete(banks[d], i, axis=0) if d == own else banks[d], banks[own][i], k_ref)
                         for i in range(len(banks[own]))] for d in banks], axis=0) for own in banks}
    return per_domain, loo


@pytest.mark.parametrize("make, k_ref", [(tiny_banks, 1), (tiny_banks, 2), (lambda: make_banks(3), 4)])
def test_knn_rescale_matches_hand_computation(make, k_ref):
    banks, test = make()
    score, per_domain, loo = run_scorer({"method": "knn_rescale", "k_ref": k_ref}, banks, test, scoring=SCORING,
                                        name="fanA")
    expected_domains, expected_loo = rescale_reference(banks, test, k_ref)
    for d in banks:
        np.testing.assert_allclose(per_domain[d], expected_domains[d], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(loo[d], expected_loo[d], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(score, np.minimum(*expected_domains.values()), rtol=1e-9, atol=1e-12)
    # A clip left in its own bank would be its own nearest neighbour (distance 0): the exclusion matters.
    assert np.all(loo["source"] > 1e-6) and np.all(loo["target"] > 1e-6)


def test_knn_rescale_caps_k_ref_at_a_small_bank():
    banks, test = tiny_banks()  # target bank of 4: a left-out clip, its nearest and at most 2 reference neighbours
    capped = run_scorer({"method": "knn_rescale", "k_ref": 2}, banks, test, scoring=SCORING, name="fanA")
    for k_ref in (3, 5):
        larger = run_scorer({"method": "knn_rescale", "k_ref": k_ref}, banks, test, scoring=SCORING, name="fanA")
        np.testing.assert_allclose(larger[1]["target"], capped[1]["target"], rtol=1e-12)
        assert not np.allclose(larger[1]["source"], capped[1]["source"])  # the 6-clip source bank uses more
    two_clips = {"source": banks["source"], "target": banks["target"][:2]}
    with pytest.raises(AsdError, match=r"target bank\): knn_rescale needs at least 3 bank clips .* holds 2; remove"):
        run_scorer({"method": "knn_rescale", "k_ref": 1}, two_clips, test, scoring=SCORING, name="fanA")


def test_knn_rescale_ignores_copies_of_a_bank_clip():
    banks, test = tiny_banks()
    copied = {"source": np.concatenate([banks["source"], banks["source"][[2, 2]]]), "target": banks["target"]}
    plain = run_scorer({"method": "knn_rescale", "k_ref": 2}, banks, test, scoring=SCORING, name="fanA")
    with_copies = run_scorer({"method": "knn_rescale", "k_ref": 2}, copied, test, scoring=SCORING, name="fanA")
    # A clip listed three times: its copies are neither references nor a density of 0 that makes scores explode.
    np.testing.assert_allclose(with_copies[1]["source"], plain[1]["source"], rtol=1e-9)
    np.testing.assert_allclose(with_copies[0], plain[0], rtol=1e-9)
    assert np.isfinite(with_copies[2]["source"]).all() and with_copies[2]["source"].max() < 100
    one_clip = {"source": np.repeat(banks["source"][:1], 4, axis=0), "target": banks["target"]}
    with pytest.raises(AsdError, match=r"source bank\): every clip of the bank is a copy of one clip"):
        run_scorer({"method": "knn_rescale", "k_ref": 2}, one_clip, test, scoring=SCORING, name="fanA")


# ----------------------------------------------------------------------------- target_mixup


@pytest.mark.parametrize("weight", [0.5, 0.3])
def test_mixup_clips_lie_between_parent_and_a_near_source_clip(weight):
    banks, _ = make_banks(4)
    source, target = unit(banks["source"]), unit(banks["target"])
    synthetic, parent, partner = mixup_clips(banks["source"], banks["target"], neighbours=3, weight=weight,
                                             count=25)
    assert synthetic.shape == (25, 16) and parent.shape == partner.shape == (25,)
    np.testing.assert_allclose(np.linalg.norm(synthetic, axis=1), 1.0, atol=1e-12)
    np.testing.assert_array_equal(parent, np.arange(25) % 6)  # target clips in turn
    _, nearest_sources = nn(source, target, 3)
    assert all(partner[i] in nearest_sources[parent[i]] for i in range(25))
    assert len({(p, s) for p, s in zip(parent, partner)}) > 6  # partners are drawn, not always the nearest
    for row, t, s in zip(synthetic, target[parent], source[partner]):
        (a, b), residual, *_ = np.linalg.lstsq(np.stack([t, s], axis=1), row, rcond=None)
        np.testing.assert_allclose(np.stack([t, s], axis=1) @ [a, b], row, atol=1e-10)  # in the plane of t, s
        assert a > 0 and b >= 0  # on the arc between them
        assert b / (a + b) <= weight + 1e-12  # mixing weight within [0, weight]
        assert row @ t >= row @ s  # weight <= 0.5: closer to the parent than to the partner
    again = mixup_clips(banks["source"], banks["target"], neighbours=3, weight=weight, count=25)
    np.testing.assert_array_equal(again[0], synthetic)  # a fixed function of the banks
    zero, zero_parent, _ = mixup_clips(banks["source"], banks["target"], neighbours=3, weight=0.0, count=8)
    np.testing.assert_allclose(zero, target[zero_parent], atol=1e-12)


def test_target_mixup_scores_match_hand_computation():
    banks, test = make_banks(5)
    score, per_domain, loo = run_scorer(MIXUP, banks, test, scoring=SCORING, name="fanA")
    synthetic, parent, partner = mixup_clips(banks["source"], banks["target"], neighbours=3, weight=0.5, count=100)
    source, target = unit(banks["source"]), unit(banks["target"])
    augmented = np.concatenate([target, synthetic])

    np.testing.assert_allclose(per_domain["source"], nn1(source, test), rtol=0, atol=1e-12)
    np.testing.assert_allclose(per_domain["target"], nn1(augmented, test), rtol=0, atol=1e-12)
    np.testing.assert_allclose(score, np.minimum(nn1(source, test), nn1(augmented, test)), rtol=0, atol=1e-12)

    # A target clip leaves the target bank with every synthetic clip interpolated from it; the source bank is whole.
    expected_target = np.array([
        min(nn1(source, target[i:i + 1])[0],
            nn1(np.concatenate([np.delete(target, i, axis=0), synthetic[parent != i]]), target[i:i + 1])[0])
        for i in range(len(target))])
    np.testing.assert_allclose(loo["target"], expected_target, rtol=0, atol=1e-12)
    naive = np.minimum(nn1(source, target),  # the clip's own synthetic clips left in
                       [nn1(np.concatenate([np.delete(target, i, axis=0), synthetic]), target[i:i + 1])[0]
                        for i in range(len(target))])
    assert np.all(loo["target"] >= naive - 1e-12) and np.any(loo["target"] > naive + 1e-3)  # exclusion matters
    # A source clip leaves the source bank, and the target bank loses the synthetic clips it was a partner of.
    expected_source = np.array([
        min(nn1(np.delete(source, j, axis=0), source[j:j + 1])[0],
            nn1(np.concatenate([target, synthetic[partner != j]]), source[j:j + 1])[0])
        for j in range(len(source))])
    np.testing.assert_allclose(loo["source"], expected_source, rtol=0, atol=1e-12)


def test_target_mixup_needs_both_domains_and_enough_source_clips():
    banks, test = tiny_banks()
    with pytest.raises(AsdError, match="source and target"):
        run_scorer(MIXUP, {"source": banks["source"], "target": banks["target"][:0]}, test, scoring=SCORING,
                   name="fanA")
    with pytest.raises(AsdError, match="neighbours"):
        run_scorer({**MIXUP, "neighbours": 7}, banks, test, scoring=SCORING, name="fanA")


# ----------------------------------------------------------------------------- kmeans


def test_spherical_kmeans_finds_the_blobs_like_sklearn():
    rng = np.random.default_rng(8)
    centres = unit(rng.standard_normal((4, 8)))
    rows = unit(np.repeat(centres, 15, axis=0) + 0.08 * rng.standard_normal((60, 8)))
    rows = rows[rng.permutation(60)]
    centroids = spherical_kmeans(rows, 4)
    assert centroids.shape == (4, 8)
    np.testing.assert_allclose(np.linalg.norm(centroids, axis=1), 1.0, atol=1e-12)
    ours = np.argmax(rows @ centroids.T, axis=1)
    theirs = KMeans(n_clusters=4, n_init=10, random_state=0).fit(rows).labels_
    assert partition(ours) == partition(theirs)
    assert len(partition(ours)) == 4
    for c in range(4):  # a converged centroid is its members' normalised mean direction
        np.testing.assert_allclose(centroids[c], unit(rows[ours == c].sum(axis=0, keepdims=True))[0], atol=1e-12)
    np.testing.assert_array_equal(spherical_kmeans(rows, 4), centroids)  # deterministic


@pytest.mark.parametrize("clusters", [5, 6, 50])
def test_spherical_kmeans_with_as_many_clusters_as_rows_returns_the_rows(clusters):
    rows = np.random.default_rng(9).standard_normal((5, 4)) * [[1], [2], [3], [4], [5]]
    np.testing.assert_allclose(spherical_kmeans(rows, clusters), unit(rows), atol=1e-15)


def test_kmeans_scores_match_hand_computation():
    banks, test = make_banks(10)
    score, per_domain, loo = run_scorer({"method": "kmeans", "clusters": 4}, banks, test, scoring=SCORING,
                                        name="fanA")
    centroids = {d: spherical_kmeans(bank, 4) for d, bank in banks.items()}
    assert centroids["source"].shape == (4, 16)
    expected = {d: np.clip(1 - (unit(test) @ c.T).max(axis=1), 0, 2) for d, c in centroids.items()}
    for d in banks:
        np.testing.assert_allclose(per_domain[d], expected[d], rtol=0, atol=1e-12)
    np.testing.assert_allclose(score, np.minimum(*expected.values()), rtol=0, atol=1e-12)
    # Leave-one-out: each tenth of the own bank (clip i in tenth i % 10) against centroids fitted on the
    # other nine tenths; the other domain's full-bank centroids.
    source, target = unit(banks["source"]), unit(banks["target"])
    folds = np.arange(40) % 10
    own = np.empty(40)
    for f in range(10):
        fitted = spherical_kmeans(source[folds != f], 4)
        own[folds == f] = 1 - (source[folds == f] @ fitted.T).max(axis=1)
    np.testing.assert_allclose(loo["source"], np.minimum(own, 1 - (source @ centroids["target"].T).max(axis=1)),
                               rtol=0, atol=1e-12)
    # The 6-clip target bank has 6 folds of one clip: a true leave-one-out.
    own_t = np.array([1 - (target[i] @ spherical_kmeans(np.delete(target, i, axis=0), 4).T).max() for i in range(6)])
    np.testing.assert_allclose(loo["target"], np.minimum(own_t, 1 - (target @ centroids["source"].T).max(axis=1)),
                               rtol=0, atol=1e-12)


def test_kmeans_with_clusters_beyond_small_banks_is_the_1nn_scorer():
    """Banks of <= 10 clips and clusters >= bank size: centroids are the clips, folds are single clips, so kmeans
    equals the paper's 1-NN (sklearn) including its leave-one-out scores."""
    banks, test = make_banks(11, n_source=9, n_target=5)
    score, per_domain, loo = run_scorer({"method": "kmeans", "clusters": 16}, banks, test, scoring=SCORING,
                                        name="fanA")
    for d, bank in banks.items():
        np.testing.assert_allclose(per_domain[d], nn1(bank, test), rtol=0, atol=1e-12)
    for own, bank in banks.items():
        expected = np.minimum(*[[nn1(np.delete(banks[d], i, axis=0) if d == own else banks[d], bank[i:i + 1])[0]
                                 for i in range(len(bank))] for d in banks])
        np.testing.assert_allclose(loo[own], expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(score, np.minimum(nn1(banks["source"], test), nn1(banks["target"], test)), atol=1e-12)


def test_kmeans_needs_two_clips_per_bank():
    banks, test = tiny_banks()
    with pytest.raises(AsdError, match="at least 2"):
        run_scorer({"method": "kmeans", "clusters": 4}, {"source": banks["source"], "target": banks["target"][:1]},
                   test, scoring=SCORING, name="fanA")


# ----------------------------------------------------------------------------- every scorer


@pytest.mark.parametrize("scorer", list(CONFIG_SCORERS))
def test_scores_use_training_clips_only(scorer):
    """A test clip's score depends on that clip and the banks only: adding 50 wildly different test clips (large
    norms, negated bank clips) around test set A and shuffling leaves A's scores and the bank scores unchanged."""
    banks, a = make_banks(12)
    rng = np.random.default_rng(13)
    extra = np.concatenate([rng.standard_normal((25, 16)) * 1e3, -banks["source"][:20], -banks["target"][:5]])
    together = np.concatenate([extra[:25], a, extra[25:]])
    order = rng.permutation(len(together))
    where_a = np.argsort(order)[25:25 + len(a)]  # position of A's clips in the shuffled set
    spec = CONFIG_SCORERS[scorer]
    alone = run_scorer(spec, banks, a, scoring=SCORING, name="fanA")
    mixed = run_scorer(spec, banks, together[order], scoring=SCORING, name="fanA")
    # float32 distances from query batches of other shapes: equal to rounding (a leak moves scores by far more)
    np.testing.assert_allclose(mixed[0][where_a], alone[0], rtol=1e-5, atol=1e-5)
    assert list(mixed[1]) == list(alone[1]) == ["source", "target"]
    for d in alone[1]:
        np.testing.assert_allclose(mixed[1][d][where_a], alone[1][d], rtol=1e-5, atol=1e-5)
    assert list(mixed[2]) == list(alone[2]) == ["source", "target"]
    for d in alone[2]:
        assert alone[2][d].shape == (len(banks[d]),)
        np.testing.assert_allclose(mixed[2][d], alone[2][d], rtol=0, atol=1e-9)
    assert not np.allclose(mixed[0][:10], mixed[0][10:20])  # the extra clips do score differently


def test_unknown_method():
    banks, test = tiny_banks()
    with pytest.raises(AsdError, match=r"'lof' is unknown.*knn, knn_rescale, target_mixup, kmeans"):
        run_scorer({"method": "lof"}, banks, test, scoring=SCORING, name="fanA")


def test_describe_names_each_method_and_its_parameters():
    specs = {
        "knn": ({"method": "knn", "k": 3}, ["3 nearest"]),
        "knn_rescale": ({"method": "knn_rescale", "k_ref": 7}, ["7 nearest"]),
        "target_mixup": ({"method": "target_mixup", "neighbours": 5, "weight": 0.35, "count": 123},
                         ["123 clips", "5 nearest", "0.35"]),
        "kmeans": ({"method": "kmeans", "clusters": 17}, ["17 spherical k-means"]),
    }
    assert set(specs) == set(METHODS)
    texts = {method: describe(spec, SCORING) for method, (spec, _) in specs.items()}
    assert len(set(texts.values())) == len(METHODS)
    for method, (_, needles) in specs.items():
        assert texts[method].strip()
        for needle in needles:
            assert needle in texts[method], (method, texts[method])
    assert "1 nearest memory-bank embedding)" in describe({"method": "knn"}, SCORING)  # k from the scoring section
    for spec in CONFIG_SCORERS.values():
        assert describe(spec, SCORING).strip()


def test_domain_normalisation_on_a_two_clip_bank_names_the_setting():
    banks, test = tiny_banks()
    two_clips = {"source": banks["source"], "target": banks["target"][:2]}  # one distance: no spread to divide by
    with pytest.raises(AsdError, match=r"target bank\): every leave-one-out distance is .* domain normalisation is "
                                       r"undefined; set scoring.domain_normalisation: false"):
        run_scorer({"method": "knn", "domain_normalisation": True}, two_clips, test, scoring=SCORING, name="fanA")
