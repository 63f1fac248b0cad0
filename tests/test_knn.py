import subprocess
import sys

import numpy as np
import pytest
from sklearn.neighbors import NearestNeighbors

import asd.scoring.knn as knn_module
from asd.errors import AsdError
from asd.scoring.knn import CosineKNN, DomainNormaliser, leave_one_out_scores, score_domains


def sklearn_knn(bank, queries, k):
    return NearestNeighbors(n_neighbors=k, metric="cosine", algorithm="brute").fit(bank).kneighbors(queries)


def exact_cosine_distance(bank, queries, indices):
    """float64 cosine distance [Q, k] of each query to the bank rows ``indices`` [Q, k] (zero rows: distance 1)."""
    def unit(rows):
        norms = np.linalg.norm(rows, axis=1, keepdims=True)
        return rows / np.where(norms == 0, 1.0, norms)

    bank, queries = unit(np.asarray(bank, np.float64)), unit(np.asarray(queries, np.float64))
    return 1.0 - np.einsum("qd,qkd->qk", queries, bank[indices])


def assert_same_neighbours(bank, queries, distances, indices, expected_distances, expected_indices, atol=1e-6):
    """Distances within ``atol``; indices equal except at float32 near-ties (same true distance within ``atol``)."""
    np.testing.assert_allclose(distances, expected_distances, rtol=0, atol=atol)
    differ = indices != expected_indices
    ours = exact_cosine_distance(bank, queries, indices)[differ]
    theirs = exact_cosine_distance(bank, queries, expected_indices)[differ]
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=atol, err_msg="a differing neighbour is not a near-tie")


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of 7 queries x 13 bank rows, so every query/bank block boundary and the top-k merge run."""
    monkeypatch.setattr(knn_module, "_QUERY_BLOCK", 7)
    monkeypatch.setattr(knn_module, "_BLOCK_ELEMENTS", 7 * 13)


@pytest.fixture(params=["argmax", "argpartition"])
def selection(request, monkeypatch):
    """Both ways of taking a block's top-k: k argmax scans (small k) and np.argpartition (large k)."""
    if request.param == "argpartition":
        monkeypatch.setattr(knn_module, "_ARGMAX_PASSES", 0)
    return request.param


@pytest.mark.parametrize("k", [1, 3, 10])
@pytest.mark.parametrize("blocks", ["default", "small"])
def test_matches_sklearn_brute_cosine(k, blocks, selection, request):
    if blocks == "small":
        request.getfixturevalue("small_blocks")
    rng = np.random.default_rng(k)
    bank = rng.standard_normal((300, 16)).astype(np.float32) * rng.uniform(0.1, 10, (300, 1)).astype(np.float32)
    bank[5] = 0  # a zero row: sklearn treats it as similarity 0 (distance 1)
    queries = rng.standard_normal((50, 16)).astype(np.float32)
    distances, indices = CosineKNN().fit(bank).neighbours(queries, k)
    expected_distances, expected_indices = sklearn_knn(bank, queries, k)
    assert distances.shape == indices.shape == (50, k)
    assert distances.dtype == np.float32 and indices.dtype == np.int64
    assert np.all(np.diff(distances, axis=1) >= 0)  # ascending
    assert np.all((distances >= 0) & (distances <= 2))
    assert_same_neighbours(bank, queries, distances, indices, expected_distances, expected_indices)
    np.testing.assert_allclose(CosineKNN().fit(bank).distances(queries, k), expected_distances.mean(axis=1), atol=1e-6)


@pytest.mark.parametrize("k", [1, 2, 5])
def test_bank_blocks_narrower_than_k(k, monkeypatch):
    """Bank blocks of 2 rows: a block's candidates are the whole block (incl. a left-out row at -inf)."""
    monkeypatch.setattr(knn_module, "_QUERY_BLOCK", 3)
    monkeypatch.setattr(knn_module, "_BLOCK_ELEMENTS", 3 * 2)
    rng = np.random.default_rng(20 + k)
    bank = rng.standard_normal((11, 6)).astype(np.float32)
    distances, indices = CosineKNN().fit(bank).neighbours(bank, k, exclude_self=True)
    for i in range(len(bank)):
        rest = np.delete(bank, i, axis=0)
        expected, expected_idx = sklearn_knn(rest, bank[i : i + 1], k)
        expected_idx = np.where(expected_idx >= i, expected_idx + 1, expected_idx)  # back to full-bank rows
        assert_same_neighbours(bank, bank[i : i + 1], distances[i : i + 1], indices[i : i + 1], expected, expected_idx)


@pytest.mark.parametrize("k", [1, 3])
def test_duplicated_bank_rows_across_blocks(k, small_blocks, selection):
    """The same bank row repeated in different bank blocks: k distinct copies come back, all at distance ~0.
    (BLAS may round the copies' similarities a few ulp apart depending on their place in the block, so
    their order is not fixed.)"""
    rng = np.random.default_rng(30 + k)
    row = rng.standard_normal(8).astype(np.float32)
    bank = rng.standard_normal((40, 8)).astype(np.float32)
    copies = [3, 17, 29, 38]  # in different 13-row bank blocks
    bank[copies] = row
    distances, indices = CosineKNN().fit(bank).neighbours(row[None, :] * 2.0, k)
    assert len(set(indices[0])) == k and set(indices[0]) <= set(copies)
    np.testing.assert_allclose(distances, 0.0, atol=1e-6)


def test_importing_scoring_does_not_load_torch():
    """The per-machine scoring job needs numpy/scipy/pandas/h5py only: torch & co. cost seconds to import."""
    code = "import sys, asd.scoring.score; print(sorted(m for m in ('torch', 'peft', 'transformers', 'sklearn') if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.strip()
    assert loaded == "[]"


@pytest.mark.parametrize("k", [1, 3])
def test_exclude_self_equals_sklearn_on_bank_minus_self(k, small_blocks, selection):
    rng = np.random.default_rng(10 + k)
    bank = rng.standard_normal((40, 8)).astype(np.float32)
    loo = CosineKNN().fit(bank).distances(bank, k, exclude_self=True)
    for i in range(len(bank)):
        rest = np.delete(bank, i, axis=0)
        expected, _ = sklearn_knn(rest, bank[i : i + 1], k)
        assert loo[i] == pytest.approx(expected.mean(), abs=1e-6)


def test_exclude_self_is_by_index_not_by_value():
    rng = np.random.default_rng(3)
    bank = rng.standard_normal((20, 8)).astype(np.float32)
    bank[7] = bank[2] * 3.0  # same direction: cosine distance 0 between rows 2 and 7
    loo = CosineKNN().fit(bank).distances(bank, 1, exclude_self=True)
    assert loo[2] == pytest.approx(0.0, abs=1e-6)
    assert loo[7] == pytest.approx(0.0, abs=1e-6)
    assert np.all(loo[[i for i in range(20) if i not in (2, 7)]] > 0.05)


def test_self_rows_excludes_only_the_given_rows():
    rng = np.random.default_rng(4)
    bank = rng.standard_normal((30, 8)).astype(np.float32)
    queries = np.concatenate([bank[:3], rng.standard_normal((2, 8)).astype(np.float32)])
    distances, indices = CosineKNN().fit(bank).neighbours(queries, 1, self_rows=np.array([0, 1, 2, -1, -1]))
    assert not np.any(indices[:3, 0] == np.arange(3))  # own rows left out
    expected, expected_idx = sklearn_knn(bank, queries[3:], 1)
    assert_same_neighbours(bank, queries[3:], distances[3:], indices[3:], expected, expected_idx)
    with pytest.raises(ValueError, match="self_rows"):
        CosineKNN().fit(bank).neighbours(queries, 1, self_rows=np.array([0, 1]))


def test_k_larger_than_bank_names_the_key():
    bank = np.eye(3, dtype=np.float32)
    with pytest.raises(AsdError, match=r"scoring\.k = 3 .* 2 bank clips .*leaving each clip out"):
        CosineKNN(name="fan (target bank)").fit(bank).distances(bank, 3, exclude_self=True)
    with pytest.raises(AsdError, match=r"scoring\.k = 4"):
        CosineKNN().fit(bank).distances(bank, 4)


def test_score_is_min_over_domains_and_empty_domain_is_skipped():
    rng = np.random.default_rng(5)
    source = rng.standard_normal((50, 8)).astype(np.float32)
    target = rng.standard_normal((5, 8)).astype(np.float32)
    test = rng.standard_normal((20, 8)).astype(np.float32)
    score, per_domain = score_domains(test, {"source": source, "target": target}, k=1, name="fan")
    source_d = sklearn_knn(source, test, 1)[0][:, 0]
    target_d = sklearn_knn(target, test, 1)[0][:, 0]
    np.testing.assert_allclose(per_domain["source"], source_d, atol=1e-5)
    np.testing.assert_allclose(per_domain["target"], target_d, atol=1e-5)
    np.testing.assert_allclose(score, np.minimum(source_d, target_d), atol=1e-5)
    assert 0 < np.sum(target_d < source_d) < 20  # both domains win somewhere: the min matters

    only_source, per_domain = score_domains(test, {"source": source, "target": target[:0]}, k=1, name="fan")
    assert list(per_domain) == ["source"]
    np.testing.assert_allclose(only_source, source_d, atol=1e-5)


def test_all_empty_banks_raise_naming_the_machine():
    empty = np.zeros((0, 8), dtype=np.float32)
    with pytest.raises(AsdError, match="memory bank is empty for gearbox"):
        score_domains(np.ones((2, 8), np.float32), {"source": empty, "target": empty}, name="gearbox")


def test_domain_normaliser_uses_only_training_statistics():
    rng = np.random.default_rng(6)
    source = rng.standard_normal((60, 8)).astype(np.float32)
    target = (rng.standard_normal((6, 8)) + 2.0).astype(np.float32)
    banks = {"source": source, "target": target}
    normaliser = DomainNormaliser.fit(banks, k=1, name="fan")
    for domain, bank in banks.items():
        loo = np.array([sklearn_knn(np.delete(bank, i, 0), bank[i : i + 1], 1)[0].item() for i in range(len(bank))])
        assert normaliser.mean[domain] == pytest.approx(loo.mean(), abs=1e-5)
        assert normaliser.std[domain] == pytest.approx(loo.std(), abs=1e-5)

    test = rng.standard_normal((10, 8)).astype(np.float32)
    # 500 wildly different test clips: if any test statistic leaked in, the first 10 scores would move by far
    # more than float tolerance (BLAS may round differently for another query-batch shape, by ~1e-7).
    outliers = (rng.standard_normal((500, 8)) * 50 + 30).astype(np.float32)
    alone, alone_domains = score_domains(test, banks, name="fan", normaliser=normaliser)
    with_outliers, _ = score_domains(np.concatenate([test, outliers]), banks, name="fan", normaliser=normaliser)
    np.testing.assert_allclose(alone, with_outliers[:10], rtol=0, atol=1e-5)
    raw, raw_domains = score_domains(test, banks, name="fan")
    np.testing.assert_allclose(
        alone_domains["target"], (raw_domains["target"] - normaliser.mean["target"]) / normaliser.std["target"]
    )
    np.testing.assert_allclose(alone, np.minimum(*[(raw_domains[d] - normaliser.mean[d]) / normaliser.std[d] for d in banks]))


def test_leave_one_out_scores_leave_out_only_the_own_bank_row():
    rng = np.random.default_rng(7)
    source = rng.standard_normal((25, 8)).astype(np.float32)
    target = rng.standard_normal((4, 8)).astype(np.float32)
    scores = leave_one_out_scores({"source": source, "target": target}, k=1, name="fan")
    for i in range(len(target)):
        own = sklearn_knn(np.delete(target, i, 0), target[i : i + 1], 1)[0].item()
        other = sklearn_knn(source, target[i : i + 1], 1)[0].item()
        assert scores["target"][i] == pytest.approx(min(own, other), abs=1e-5)
    assert scores["source"].shape == (25,) and np.all(scores["source"] > 0)
