"""Named scoring back-ends: one system's memory banks + test embeddings -> anomaly scores.

A scorer is a config entry ``scorers.<name>: {method: ..., <parameters>}``; every scorer of the
config runs in the same scoring job on the same embeddings (read once). Methods:

- ``knn`` -- the paper: cosine k-NN distance to each domain's bank, score = min over the domains
  (``asd.scoring.knn``; ``k``, ``separate_domain_banks`` and ``domain_normalisation`` default to the
  ``scoring`` section and may be set per scorer, e.g. ``knn_domain_norm``).
- ``knn_rescale`` -- local-density rescaling (Wilkinghoff, ICASSP 2025): the distance to the
  nearest bank clip divided by that clip's mean distance to its own ``k_ref`` nearest bank
  neighbours (at most the bank's size - 2; copies of the clip do not count), per domain, then the min.
- ``target_mixup`` -- the small target bank augmented with ``count`` clips interpolated from target
  clips towards one of their ``neighbours`` nearest source clips (weight drawn in [0, ``weight``];
  MemMixup / SMOTE), then the paper's k-NN (k = 1).
- ``kmeans`` -- each domain's bank replaced by up to ``clusters`` spherical k-means centroids, then
  the distance to the nearest centroid, and the min over the domains.

Every scorer uses training clips only: a test clip's score depends on that clip and the banks,
never on another test clip. Leave-one-out scores of the bank clips (the training statistics that
ensembles and decision thresholds use) leave the clip out of its own bank -- for ``target_mixup``
also the clips interpolated from it; ``kmeans`` scores each tenth of a bank with centroids fitted
on the other nine tenths.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from asd.errors import AsdError
from asd.scoring.knn import DomainNormaliser, leave_one_out_scores, score_domains

Banks = dict[str, np.ndarray]  # domain -> bank embeddings [M_domain, D]
# (test scores [Q], per-domain test scores {domain: [Q]}, leave-one-out bank scores {domain: [M_domain]})
Scores = tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]
# (queries [Q, D] unit rows, bank domain, the domain whose bank the queries are, or None for test clips) -> [Q]
DomainDistance = Callable[[np.ndarray, str, "str | None"], np.ndarray]

METHODS = ("knn", "knn_rescale", "target_mixup", "kmeans")
KMEANS_FOLDS = 10  # bank clips scored by centroids fitted without their tenth of the bank
KMEANS_ITERATIONS = 100
SEED = 0  # target_mixup's interpolations and kmeans' initialisation are fixed functions of the bank
DUPLICATE_DISTANCE = 1e-6  # cosine distance at or below which two bank clips are copies of one clip


def _unit(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float64)
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


def _distances(queries: np.ndarray, bank: np.ndarray) -> np.ndarray:
    """Cosine distances [Q, M] between unit rows, clipped to [0, 2] as in asd.scoring.knn."""
    return np.clip(1.0 - queries @ bank.T, 0.0, 2.0)


def _per_domain(banks: Banks, test: np.ndarray, distance: DomainDistance, *, name: str) -> Scores:
    """Test scores and leave-one-out bank scores: per domain ``distance``, then the min over the domains."""
    domains = [d for d, bank in banks.items() if len(bank)]
    if not domains:
        raise AsdError(f"memory bank is empty for {name}: no source or target clips to compare with; check that "
                       "the manifest lists its training clips and rerun the 'score' rule.")
    test = _unit(test)
    per_domain = {d: distance(test, d, None) for d in domains}
    loo = {own: np.min(np.stack([distance(_unit(banks[own]), d, own) for d in domains]), axis=0) for own in domains}
    return np.min(np.stack(list(per_domain.values())), axis=0), per_domain, loo


def _need(bank: np.ndarray, count: int, *, name: str, parameter: str) -> None:
    if len(bank) < count:
        raise AsdError(f"{name}: {parameter} needs at least {count} bank clips, the bank holds {len(bank)}; lower "
                       f"{parameter} in the scorer's config entry, or use another scorer.")


# ----------------------------------------------------------------------------- knn (the paper)

def score_knn(banks: Banks, test: np.ndarray, *, k: int, separate_domain_banks: bool, domain_normalisation: bool,
              name: str) -> Scores:
    """The paper's scorer, through the same code as before scorers existed (its numbers are unchanged)."""
    if not separate_domain_banks:
        banks = {"all": np.concatenate(list(banks.values()))}
    normaliser = DomainNormaliser.fit(banks, k, name=name) if domain_normalisation else None
    score, per_domain = score_domains(test, banks, k, name=name, normaliser=normaliser)
    return score, per_domain, leave_one_out_scores(banks, k, name=name, normaliser=normaliser)


# ----------------------------------------------------------------------------- knn_rescale

def score_knn_rescale(banks: Banks, test: np.ndarray, *, k_ref: int, name: str) -> Scores:
    """A small bank (the demo's 4 target clips) uses as many reference neighbours as it has: k_ref is capped at
    its size - 2 (a left-out clip and the nearest clip itself are not references). Copies of the nearest clip
    in the bank (a file listed twice) are not references either: their distance 0 says nothing of the density
    around it and would make every score near that clip huge."""
    units = {d: _unit(bank) for d, bank in banks.items()}
    own_distances = {d: _distances(bank, bank) for d, bank in units.items()}  # [M, M] per domain
    references = {}
    for domain, bank in banks.items():
        if 0 < len(bank) < 3:
            raise AsdError(f"{name} ({domain} bank): knn_rescale needs at least 3 bank clips (a left-out clip, its "
                           f"nearest and one reference), the bank holds {len(bank)}; remove knn_rescale from "
                           "'scorers' for such data.")
        if len(bank):
            references[domain] = min(k_ref, len(bank) - 2)

    def distance(queries: np.ndarray, domain: str, own: str | None) -> np.ndarray:
        to_bank = _distances(queries, units[domain])  # [Q, M]
        rows = np.arange(len(queries))
        left_out = rows if own == domain else None  # the queries are this bank: row q leaves bank clip q out
        if left_out is not None:
            to_bank[rows, left_out] = np.inf
        nearest = np.argmin(to_bank, axis=1)  # [Q]
        neighbours = own_distances[domain][nearest].copy()  # [Q, M]: the nearest clip's distances to its bank
        neighbours[rows, nearest] = np.inf  # not to itself
        neighbours[neighbours <= DUPLICATE_DISTANCE] = np.inf  # nor to its copies
        if left_out is not None:
            neighbours[rows, left_out] = np.inf  # nor to the left-out clip
        closest = np.sort(neighbours, axis=1)[:, :references[domain]]  # [Q, k_ref]
        found = np.isfinite(closest)
        if not found.any(axis=1).all():
            raise AsdError(f"{name} ({domain} bank): every clip of the bank is a copy of one clip, so knn_rescale's "
                           "local density is undefined; check the training clips, or remove knn_rescale from "
                           "'scorers'.")
        reference = np.where(found, closest, 0.0).sum(axis=1) / found.sum(axis=1)  # [Q] density at the nearest
        return to_bank[rows, nearest] / reference

    return _per_domain(banks, test, distance, name=name)


# ----------------------------------------------------------------------------- target_mixup

def mixup_clips(source: np.ndarray, target: np.ndarray, *, neighbours: int, weight: float,
                count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``count`` unit rows interpolated from target clips (in turn) towards one of their ``neighbours``
    nearest source clips, with weight drawn in [0, weight]; and each one's target and source clip index."""
    rng = np.random.default_rng(SEED)
    source, target = _unit(source), _unit(target)
    nearest = np.argsort(_distances(target, source), axis=1, kind="stable")[:, :neighbours]  # [M_t, n]
    parent = np.arange(count) % len(target)  # [count]
    partner = nearest[parent, rng.integers(nearest.shape[1], size=count)]  # [count]
    mix = rng.uniform(0.0, weight, size=(count, 1))  # [count, 1]
    return _unit((1.0 - mix) * target[parent] + mix * source[partner]), parent, partner


def score_target_mixup(banks: Banks, test: np.ndarray, *, neighbours: int, weight: float, count: int,
                       name: str) -> Scores:
    if not len(banks.get("target", ())) or not len(banks.get("source", ())):
        raise AsdError(f"{name}: target_mixup needs source and target training clips; this machine type lacks "
                       "one of them, so use another scorer for it.")
    _need(banks["source"], neighbours, name=f"{name} (source bank)", parameter="neighbours")
    synthetic, parent, partner = mixup_clips(banks["source"], banks["target"], neighbours=neighbours,
                                             weight=weight, count=count)
    units = {"source": _unit(banks["source"]), "target": np.concatenate([_unit(banks["target"]), synthetic])}
    made_from = {"target": parent, "source": partner}  # a bank clip's own synthetic clips leave with it

    def distance(queries: np.ndarray, domain: str, own: str | None) -> np.ndarray:
        to_bank = _distances(queries, units[domain])  # [Q, M]
        if own is not None:
            rows = np.arange(len(queries))
            if own == domain:
                to_bank[rows, rows] = np.inf
            if domain == "target":  # the synthetic rows come after the real target clips
                offset = len(banks["target"])
                to_bank[:, offset:][made_from[own][None, :] == rows[:, None]] = np.inf
        return to_bank.min(axis=1)

    return _per_domain(banks, test, distance, name=name)


# ----------------------------------------------------------------------------- kmeans

def spherical_kmeans(rows: np.ndarray, clusters: int) -> np.ndarray:
    """Unit centroids [min(clusters, N), D] of unit rows [N, D]: k-means++ seeding, then Lloyd steps on cosine
    similarity until the assignment stops changing."""
    rows = _unit(rows)
    if clusters >= len(rows):
        return rows
    rng = np.random.default_rng(SEED)
    centroids = [rows[rng.integers(len(rows))]]
    for _ in range(clusters - 1):  # k-means++: the next seed far from those chosen
        gap = np.min(_distances(rows, np.stack(centroids)), axis=1) ** 2
        centroids.append(rows[rng.choice(len(rows), p=gap / gap.sum())] if gap.sum() > 0 else rows[0])
    centroids = np.stack(centroids)
    assignment = None
    for _ in range(KMEANS_ITERATIONS):
        new = np.argmax(rows @ centroids.T, axis=1)
        if assignment is not None and np.array_equal(new, assignment):
            break
        assignment = new
        for c in range(clusters):
            members = rows[assignment == c]
            if len(members):  # an emptied cluster keeps its centroid
                centroids[c] = members.sum(axis=0)
        centroids = _unit(centroids)
    return centroids


def score_kmeans(banks: Banks, test: np.ndarray, *, clusters: int, name: str) -> Scores:
    centroids = {d: spherical_kmeans(bank, clusters) for d, bank in banks.items() if len(bank)}
    for domain, bank in banks.items():
        if len(bank) == 1:
            raise AsdError(f"{name} ({domain} bank): kmeans needs at least 2 bank clips to leave one out; use "
                           "another scorer for this machine type.")

    def distance(queries: np.ndarray, domain: str, own: str | None) -> np.ndarray:
        if own != domain:
            return _distances(queries, centroids[domain]).min(axis=1)
        folds = np.arange(len(queries)) % min(KMEANS_FOLDS, len(queries))  # [M]
        result = np.empty(len(queries))
        for fold in np.unique(folds):
            held = folds == fold
            fitted = spherical_kmeans(queries[~held], clusters)
            result[held] = _distances(queries[held], fitted).min(axis=1)
        return result

    return _per_domain(banks, test, distance, name=name)


# ----------------------------------------------------------------------------- dispatch

def run_scorer(spec: dict[str, Any], banks: Banks, test: np.ndarray, *, scoring: dict, name: str) -> Scores:
    """Scores of one configured scorer: ``spec`` is its config entry, ``scoring`` the config section whose
    ``k`` / ``separate_domain_banks`` / ``domain_normalisation`` a knn entry may override."""
    method = spec["method"]
    if method == "knn":
        return score_knn(banks, test, name=name, **{key: spec.get(key, scoring[key]) for key in
                                                    ("k", "separate_domain_banks", "domain_normalisation")})
    if method == "knn_rescale":
        return score_knn_rescale(banks, test, k_ref=spec["k_ref"], name=name)
    if method == "target_mixup":
        return score_target_mixup(banks, test, neighbours=spec["neighbours"], weight=spec["weight"],
                                  count=spec["count"], name=name)
    if method == "kmeans":
        return score_kmeans(banks, test, clusters=spec["clusters"], name=name)
    raise AsdError(f"scorer method {method!r} is unknown; use one of {', '.join(METHODS)}.")


def describe(spec: dict[str, Any], scoring: dict) -> str:
    """The detector of a scorer in words (the submission's meta.yaml; banks and normalisation are described
    apart, as its domain generalisation method)."""
    method = spec["method"]
    if method == "knn":
        k = spec.get("k", scoring["k"])
        return f"cosine KNN detector (mean distance to the {k} nearest memory-bank embedding{'s' if k > 1 else ''})"
    if method == "knn_rescale":
        return (f"cosine nearest-neighbour distance rescaled by the local density of the bank (the nearest bank "
                f"clip's mean distance to its {spec['k_ref']} nearest bank neighbours)")
    if method == "target_mixup":
        return (f"cosine nearest-neighbour detector; target bank augmented with {spec['count']} clips interpolated "
                f"towards their {spec['neighbours']} nearest source clips (weight up to {spec['weight']:g})")
    return f"cosine distance to the nearest of up to {spec['clusters']} spherical k-means centroids per domain"
