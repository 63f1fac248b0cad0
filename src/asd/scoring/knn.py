"""Cosine k-nearest-neighbour anomaly scores against per-domain memory banks (AnoPatch-style KNN).

The score of a clip is the mean cosine distance (1 - cos) to its k nearest bank embeddings,
computed exactly like ``sklearn.neighbors.NearestNeighbors(metric="cosine", algorithm="brute")``
(rows L2-normalised, zero rows left at zero, distances clipped to [0, 2]) but blocked so that a
1,000,000 x 128 bank never needs more than a few hundred MiB of similarities at once.

With separate source and target banks the score is the minimum over the domains; optionally each
domain's distances are first standardised with the mean/std of that bank's own leave-one-out
distances (``DomainNormaliser``), which uses training clips only and never test statistics.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from asd.errors import AsdError

# Similarity block = _QUERY_BLOCK x (_BLOCK_ELEMENTS // _QUERY_BLOCK) float32 = 64 MiB (plus, for
# k > _ARGMAX_PASSES, np.argpartition's int64 index array of the same shape, 128 MiB): large enough
# for an efficient matmul, small enough that memory stays far below 2 GB.
_QUERY_BLOCK = 1024
_BLOCK_ELEMENTS = 1 << 24
_ARGMAX_PASSES = 8  # up to this k, a block's top-k is found by k argmax scans instead of np.argpartition


def _l2_normalise(rows: np.ndarray) -> np.ndarray:
    """Unit-length float32 rows; zero rows stay zero (as sklearn's ``normalize`` does)."""
    rows = np.asarray(rows, dtype=np.float32)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)  # [N, 1]
    norms[norms == 0] = 1.0
    return rows / norms


def _block_top_k(sim: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k largest similarities [Qb, k] of each row of ``sim`` [Qb, Mb] (unordered) and their columns.

    May overwrite ``sim``. Small k: k linear scans (argmax, then that entry set to -inf), each ~100x
    cheaper than np.argpartition of the block; larger k: one np.argpartition.
    """
    width = sim.shape[1]
    if k >= width:
        return sim, np.broadcast_to(np.arange(width), sim.shape)
    if k <= _ARGMAX_PASSES:
        # width > k and at most one entry per row is an excluded -inf, so each scan finds a new column.
        rows = np.arange(sim.shape[0])
        cols = np.empty((sim.shape[0], k), dtype=np.int64)
        values = np.empty((sim.shape[0], k), dtype=sim.dtype)
        for j in range(k):
            cols[:, j] = sim.argmax(axis=1)  # first column among equal maxima
            values[:, j] = sim[rows, cols[:, j]]
            if j + 1 < k:
                sim[rows, cols[:, j]] = -np.inf
        return values, cols
    cols = np.argpartition(sim, width - k, axis=1)[:, width - k :]  # [Qb, k]
    return np.take_along_axis(sim, cols, axis=1), cols


class CosineKNN:
    """Exact brute-force cosine KNN over one memory bank."""

    def __init__(self, *, name: str = "memory bank") -> None:
        self.name = name
        self._bank: np.ndarray | None = None

    def fit(self, bank: np.ndarray) -> "CosineKNN":
        """Store the L2-normalised bank [M, D] (normalised once, reused by every query)."""
        bank = np.asarray(bank)
        if bank.ndim != 2 or bank.shape[0] == 0:
            raise AsdError(
                f"memory bank is empty for {self.name}: no normal clips to compare with; "
                "check that the manifest lists its training clips and rerun the 'score' rule."
            )
        self._bank = np.ascontiguousarray(_l2_normalise(bank))
        return self

    @property
    def size(self) -> int:
        return 0 if self._bank is None else int(self._bank.shape[0])

    def neighbours(
        self,
        queries: np.ndarray,
        k: int = 1,
        *,
        exclude_self: bool = False,
        self_rows: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Cosine distances [Q, k] (ascending, float32) and bank indices [Q, k] of the k nearest rows.

        ``exclude_self=True`` means the queries ARE the bank: query i never matches bank row i.
        ``self_rows`` generalises that: query i never matches bank row ``self_rows[i]`` (-1 = none).
        Exclusion is by index, so duplicated embeddings elsewhere in the bank still count.
        Bit-equal similarities are ordered by bank index (lowest first); near-ties may come in any order
        (BLAS can round a row's similarity a few ulp differently depending on its place in the block).
        """
        if self._bank is None:
            raise RuntimeError("CosineKNN.fit must be called before querying")
        bank = self._bank  # [M, D]
        query_rows = _l2_normalise(queries)  # [Q, D]
        n_queries, n_bank = query_rows.shape[0], bank.shape[0]
        if query_rows.shape[1] != bank.shape[1]:
            raise AsdError(
                f"{self.name}: query embeddings have {query_rows.shape[1]} dimensions but the bank has "
                f"{bank.shape[1]}; embeddings from different models are mixed, rerun the 'embed' rule."
            )
        if exclude_self:
            if n_queries != n_bank:
                raise ValueError("exclude_self=True needs the queries to be the bank itself")
            self_rows = np.arange(n_queries)
        excluding = self_rows is not None
        available = n_bank - 1 if excluding else n_bank
        if not 1 <= k <= available:
            raise AsdError(
                f"{self.name}: scoring.k = {k} but only {available} bank clips are available"
                f"{' after leaving each clip out' if excluding else ''}; set scoring.k between 1 and {available}."
            )
        if self_rows is not None:
            self_rows = np.asarray(self_rows, dtype=np.int64)
            if self_rows.shape != (n_queries,):
                raise ValueError(f"self_rows has shape {self_rows.shape}; it needs one bank row (or -1) per query")

        bank_block = max(1, _BLOCK_ELEMENTS // _QUERY_BLOCK)
        best_sim = np.empty((n_queries, k), dtype=np.float32)
        best_idx = np.empty((n_queries, k), dtype=np.int64)
        for q0 in range(0, n_queries, _QUERY_BLOCK):
            q1 = min(q0 + _QUERY_BLOCK, n_queries)
            block_queries = query_rows[q0:q1]  # [Qb, D]
            cand_sim, cand_idx = [], []  # per bank block: the block's top-k [Qb, <=k]
            for b0 in range(0, n_bank, bank_block):
                b1 = min(b0 + bank_block, n_bank)
                sim = block_queries @ bank[b0:b1].T  # [Qb, Mb] float32
                if self_rows is not None:
                    own = self_rows[q0:q1]  # [Qb]
                    hit = np.nonzero((own >= b0) & (own < b1))[0]
                    sim[hit, own[hit] - b0] = -np.inf
                block_sim, block_cols = _block_top_k(sim, k)
                cand_sim.append(block_sim)
                cand_idx.append(block_cols + b0)
            sims = np.concatenate(cand_sim, axis=1)  # [Qb, <=k * bank blocks]
            idx = np.concatenate(cand_idx, axis=1)
            # Stable sort of the few candidates: most similar first, equal similarities by bank index.
            order = np.lexsort((idx, -sims), axis=1)[:, :k]  # [Qb, k]
            best_sim[q0:q1] = np.take_along_axis(sims, order, axis=1)
            best_idx[q0:q1] = np.take_along_axis(idx, order, axis=1)
        distances = np.clip(1.0 - best_sim, 0.0, 2.0)  # same clipping as sklearn's cosine_distances
        return distances, best_idx

    def distances(
        self,
        queries: np.ndarray,
        k: int = 1,
        *,
        exclude_self: bool = False,
        self_rows: np.ndarray | None = None,
    ) -> np.ndarray:
        """Mean cosine distance [Q] (float64) to the k nearest bank rows; see ``neighbours``."""
        nearest, _ = self.neighbours(queries, k, exclude_self=exclude_self, self_rows=self_rows)
        return nearest.mean(axis=1, dtype=np.float64)


@dataclass(frozen=True)
class DomainNormaliser:
    """Per-domain (mean, std) of each bank's own leave-one-out k-NN distances (training clips only)."""

    mean: dict[str, float]
    std: dict[str, float]

    @classmethod
    def fit(cls, banks: dict[str, np.ndarray], k: int = 1, *, name: str) -> "DomainNormaliser":
        mean, std = {}, {}
        for domain, bank in banks.items():
            if len(bank) == 0:
                continue
            loo = CosineKNN(name=f"{name} ({domain} bank)").fit(bank).distances(bank, k, exclude_self=True)
            if loo.std() == 0:
                raise AsdError(
                    f"{name} ({domain} bank): every leave-one-out distance is {loo[0]:.6g}, so domain "
                    "normalisation is undefined; set scoring.domain_normalisation: false."
                )
            mean[domain], std[domain] = float(loo.mean()), float(loo.std())
        return cls(mean=mean, std=std)

    def apply(self, domain: str, distances: np.ndarray) -> np.ndarray:
        return (distances - self.mean[domain]) / self.std[domain]


def score_domains(
    test_emb: np.ndarray,
    banks: dict[str, np.ndarray],
    k: int = 1,
    *,
    name: str,
    normaliser: DomainNormaliser | None = None,
    self_rows: dict[str, np.ndarray] | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Score [Q] = min over non-empty domain banks of the (optionally normalised) k-NN distance.

    ``per_domain`` holds, for each non-empty domain, the [Q] values that entered the minimum.
    ``self_rows[domain][i]`` (-1 = none) is the bank row to leave out for query i (leave-one-out).
    """
    per_domain: dict[str, np.ndarray] = {}
    for domain, bank in banks.items():
        if len(bank) == 0:
            continue  # e.g. a machine type without target training clips
        knn = CosineKNN(name=f"{name} ({domain} bank)").fit(bank)
        rows = None if self_rows is None else self_rows.get(domain)
        distances = knn.distances(test_emb, k, self_rows=rows)
        per_domain[domain] = distances if normaliser is None else normaliser.apply(domain, distances)
    if not per_domain:
        raise AsdError(
            f"memory bank is empty for {name}: no source or target clips to compare with; "
            "check that the manifest lists its training clips and rerun the 'score' rule."
        )
    score = np.min(np.stack(list(per_domain.values())), axis=0)  # [domains, Q] -> [Q]
    return score, per_domain


def leave_one_out_scores(
    banks: dict[str, np.ndarray],
    k: int = 1,
    *,
    name: str,
    normaliser: DomainNormaliser | None = None,
) -> dict[str, np.ndarray]:
    """Per domain, the scores [M_domain] of that bank's own clips, each left out of its own bank."""
    scores = {}
    for domain, bank in banks.items():
        if len(bank) == 0:
            continue
        own_rows = {domain: np.arange(len(bank))}  # other domains' banks do not contain these clips
        scores[domain], _ = score_domains(bank, banks, k, name=name, normaliser=normaliser, self_rows=own_rows)
    return scores
