"""The official DCASE 2025 Task 2 numbers, computed as the official evaluator
(nttcslab/dcase2024_task2_evaluator) computes them.

Per machine type and section (scores: higher = more anomalous):
- AUC_source / AUC_target: ROC AUC over that domain's normal clips plus ALL anomalous clips;
- pAUC: sklearn ``roc_auc_score(max_fpr=0.1)`` over every clip (McClish-standardised);
- precision / recall / F1 of the 0/1 decisions over that domain's clips only.
Official score: harmonic mean of every AUC_source, AUC_target and pAUC, each floored at EPS.
Score, decision and ground-truth rows are paired by sorted file name, as the evaluator does;
unlike the evaluator, the names are first checked to be exactly the ground-truth clips.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import numpy as np
import pandas as pd

from asd.errors import AsdError
from asd.data.groundtruth import load_ground_truth
from asd.submission.archive import bad_value_mask, clip_name_problems, format_examples, read_result_csv, result_file_name

MAX_FPR = 0.1
EPS = sys.float_info.epsilon
DOMAINS = ("source", "target")
OFFICIAL_SCORE_INPUTS_ORDER = (
    "AUC_source for each machine (sorted), then AUC_target for each machine, then pAUC for each machine"
)
# Summary metric -> (source-side key, target-side key); pAUC covers both domains, so it stands
# on both sides, which is how the evaluator's summary rows average it.
_SUMMARY_KEYS = {
    "AUC": ("AUC_source", "AUC_target"),
    "pAUC": ("pAUC", "pAUC"),
    "precision": ("precision_source", "precision_target"),
    "recall": ("recall_source", "recall_target"),
    "F1": ("F1_source", "F1_target"),
}
_CI_CONFIDENCE = 0.95


class AlignedSection(NamedTuple):
    """One machine/section's clips in sorted file-name order."""

    label: np.ndarray  # [clips] int, 1 = anomaly
    domain: np.ndarray  # [clips] str, "source" | "target"
    score: np.ndarray  # [clips] float
    decision: np.ndarray | None  # [clips] int 0/1, or None without decisions


def align_section(
    scores: pd.DataFrame,
    decisions: pd.DataFrame | None,
    truth: pd.DataFrame,
    *,
    score_source: str = "anomaly scores",
    decision_source: str = "decisions",
) -> AlignedSection:
    """Pair score/decision rows with the ground truth of one machine/section by sorted file name."""
    truth = truth.sort_values("file", ignore_index=True)
    normal = truth["label"] == 0
    if not (~normal).any() or any(not (normal & (truth["domain"] == domain)).any() for domain in DOMAINS):
        where = ", ".join(sorted(set(truth["machine"] + " section " + truth["section"]))) or "an empty table"
        raise AsdError(f"the ground truth of {where} needs normal clips in both domains and anomalous clips; "
                       "check the ground-truth source.")
    files = list(truth["file"])
    # The evaluator maps a team's labelled names back to the distributed ones via the attributes.
    originals = truth["original_name"] if "original_name" in truth else [None] * len(truth)
    renamed = {
        original: file for original, file in zip(originals, truth["file"])
        if isinstance(original, str) and original != file
    }
    return AlignedSection(
        label=truth["label"].to_numpy(dtype="int64"),
        domain=truth["domain"].to_numpy(dtype=str),
        score=_sorted_values(scores, "score", files=files, renamed=renamed, source=score_source),
        decision=None if decisions is None else
        _sorted_values(decisions, "decision", files=files, renamed=renamed, source=decision_source).astype("int64"),
    )


def roc_auc(label: np.ndarray, score: np.ndarray, *, max_fpr: float | None = None) -> float:
    """sklearn's ``roc_auc_score`` (ties included; with ``max_fpr`` its McClish-standardised partial area),
    in numpy: importing scikit-learn would cost every evaluation job about a second of start-up."""
    _, level = np.unique(-np.asarray(score), return_inverse=True)  # dense rank, 0 = most anomalous
    per_level = lambda picked: np.bincount(level[picked], minlength=int(level.max()) + 1)[None, :]  # noqa: E731
    return float(_roc_area(per_level(label == 0), per_level(label == 1), max_fpr=max_fpr)[0])


def section_metrics(section: AlignedSection) -> dict[str, float]:
    """AUC_all, AUC_source, AUC_target, pAUC and (with decisions) precision/recall/F1 per domain."""
    label, domain, score = section.label, section.domain, section.score
    metrics = {"AUC_all": roc_auc(label, score)}
    for name in DOMAINS:
        in_auc = (domain == name) | (label == 1)  # this domain's normals + every anomaly
        metrics[f"AUC_{name}"] = roc_auc(label[in_auc], score[in_auc])
    metrics["pAUC"] = roc_auc(label, score, max_fpr=MAX_FPR)
    if section.decision is not None:
        per_domain = {}
        for name in DOMAINS:
            truth, decided = label[domain == name] == 1, section.decision[domain == name] == 1
            tp, fp, fn = np.sum(truth & decided), np.sum(~truth & decided), np.sum(truth & ~decided)
            precision = tp / np.maximum(tp + fp, EPS)
            recall = tp / np.maximum(tp + fn, EPS)
            per_domain[name] = (precision, recall, 2.0 * precision * recall / np.maximum(precision + recall, EPS))
        for index, metric in enumerate(("precision", "recall", "F1")):
            for name in DOMAINS:
                metrics[f"{metric}_{name}"] = per_domain[name][index]
    return {key: float(value) for key, value in metrics.items()}


def machine_metrics(
    scores: pd.DataFrame,
    decisions: pd.DataFrame | None,
    truth: pd.DataFrame,
    *,
    score_source: str = "anomaly scores",
    decision_source: str = "decisions",
) -> dict[str, float]:
    """Official metrics of one machine/section from DataFrame[file, score], DataFrame[file, decision]
    (or None) and that machine/section's ground truth; ``*_source`` name the inputs in errors."""
    return section_metrics(align_section(scores, decisions, truth,
                                         score_source=score_source, decision_source=decision_source))


def harmonic_mean(values, axis=None):
    """scipy.stats.hmean of positive values (a float, or an array along ``axis``), without importing scipy."""
    values = np.asarray(values, dtype=np.float64)
    count = values.size if axis is None else values.shape[axis]
    result = count / np.sum(1.0 / values, axis=axis)
    return float(result) if axis is None else result


def official_score_inputs(sections: Sequence[Mapping[str, float]]) -> list[float]:
    """Every AUC_source, then every AUC_target, then every pAUC, in the given (sorted) order."""
    return [section[key] for key in ("AUC_source", "AUC_target", "pAUC") for section in sections]


def official_score(sections: Sequence[Mapping[str, float]]) -> float:
    """Harmonic mean of all AUC_source, AUC_target and pAUC values, each floored at EPS."""
    return harmonic_mean(np.maximum(official_score_inputs(sections), EPS))


def summaries(sections: Sequence[Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """The evaluator's summary rows: arithmetic/harmonic means over both domains, and harmonic
    means per domain, of AUC, pAUC and (when present) precision, recall, F1."""
    rows: dict[str, dict[str, float]] = {
        "arithmetic_mean": {}, "harmonic_mean": {}, "source_harmonic_mean": {}, "target_harmonic_mean": {},
    }
    for metric, (source_key, target_key) in _SUMMARY_KEYS.items():
        if source_key not in sections[0]:
            continue
        source = np.array([section[source_key] for section in sections])  # [sections]
        target = np.array([section[target_key] for section in sections])  # [sections]
        both = np.concatenate([source, target])  # [2 * sections]
        rows["arithmetic_mean"][metric] = float(np.mean(both))
        rows["harmonic_mean"][metric] = _floored_hmean(both)
        rows["source_harmonic_mean"][metric] = _floored_hmean(source)
        rows["target_harmonic_mean"][metric] = _floored_hmean(target)
    return rows


def jackknife_ci95(
    label: np.ndarray, score: np.ndarray, *, statistic: Callable[[np.ndarray, np.ndarray], float]
) -> float:
    """95 % half-width of the leave-one-out jackknife estimate of ``statistic(label, score)``
    (Mesaros et al. 2019, as the evaluator uses it; the variance divides by N(N-1))."""
    count = len(label)
    keep = np.ones(count, dtype=bool)
    leave_one_out = np.empty(count)
    for index in range(count):
        keep[index] = False
        leave_one_out[index] = statistic(label[keep], score[keep])
        keep[index] = True
    sigma = np.sqrt(np.sum((leave_one_out - leave_one_out.mean()) ** 2) / (count * (count - 1)))
    from scipy import stats  # here: importing scipy.stats costs a light job ~1 s of start-up

    return float(abs(stats.t.ppf((1 - _CI_CONFIDENCE) / 2, count - 1)) * sigma)


def evaluate_dir(
    scores_dir: str | os.PathLike,
    ground_truth: str | os.PathLike | pd.DataFrame,
    *,
    machines: Sequence[str] | None = None,
    ci95: bool = False,
) -> dict[str, Any]:
    """Evaluate a folder of result files against the ground truth (a path for
    ``load_ground_truth`` or its DataFrame); returns a JSON-able dict.

    Every machine type of the ground truth (or of ``machines``) needs both
    ``anomaly_score_<machine>_section_<ss>_test.csv`` and ``decision_result_...``. ``ci95`` adds
    the evaluator's jackknife interval (about 5 s per 1800 clips).
    """
    scores_dir = Path(scores_dir)
    truth = ground_truth if isinstance(ground_truth, pd.DataFrame) else load_ground_truth(ground_truth)
    known = sorted(set(truth["machine"]))
    selected = known if machines is None else sorted(machines)
    if unknown := sorted(set(selected) - set(known)):
        raise AsdError(f"machine type(s) {unknown} are not in the ground truth ({', '.join(known)}); "
                       "fix the machine list.")
    groups = sorted(truth[truth["machine"].isin(selected)].groupby(["machine", "section"]), key=lambda item: item[0])
    paths = {
        key: {kind: scores_dir / result_file_name(key[0], kind=kind, section=key[1]) for kind in ("score", "decision")}
        for key, _ in groups
    }
    missing = [path.name for pair in paths.values() for path in pair.values() if not path.is_file()]
    if missing:
        raise AsdError(
            f"{scores_dir} lacks {len(missing)} result file(s) ({format_examples(missing)}); write scores and "
            "decisions for every machine type in the ground truth, or restrict the machine types."
        )
    aligned = {
        key: align_section(
            read_result_csv(paths[key]["score"], kind="score"),
            read_result_csv(paths[key]["decision"], kind="decision"),
            group,
            score_source=str(paths[key]["score"]),
            decision_source=str(paths[key]["decision"]),
        )
        for key, group in groups
    }
    per_section = {key: section_metrics(section) for key, section in aligned.items()}
    sections = list(per_section.values())
    result: dict[str, Any] = {
        "scores_dir": str(scores_dir),
        "machines": {},
        "machine_summary": {},
        "overall": summaries(sections),
        "official_score": official_score(sections),
        "official_score_inputs_order": OFFICIAL_SCORE_INPUTS_ORDER,
        "official_score_inputs": official_score_inputs(sections),
    }
    for (machine, section), metrics in per_section.items():
        result["machines"].setdefault(machine, {})[f"section_{section}"] = metrics
    for machine, by_section in result["machines"].items():
        result["machine_summary"][machine] = summaries(list(by_section.values()))
    result["paper_table"] = _paper_table(result)
    if ci95:
        label = np.concatenate([section.label for section in aligned.values()])  # [all clips]
        score = np.concatenate([section.score for section in aligned.values()])  # [all clips]
        intervals = [
            jackknife_ci95(label, score, statistic=roc_auc),
            jackknife_ci95(label, score, statistic=lambda y, s: roc_auc(y, s, max_fpr=MAX_FPR)),
        ]
        result["official_score_ci95"] = float(np.mean(intervals))
    return result


def format_table(result: Mapping[str, Any]) -> str:
    """A text table (percent): one row per machine type with AUC-S, AUC-T, pAUC, then the
    harmonic and arithmetic means and the official score."""
    table = result["paper_table"]
    columns = {"AUC-S": "AUC (source)", "AUC-T": "AUC (target)", "pAUC": "pAUC (source, target)"}
    rows = [(machine, [table[row][machine] for row in columns.values()]) for machine in result["machines"]]
    rows += [(mean, [table[row][mean] for row in columns.values()]) for mean in ("h-mean", "a-mean")]
    width = max(len(name) for name, _ in rows)
    header = f"{'machine':<{width}}" + "".join(f"{column:>9}" for column in columns)
    lines = [header, "-" * len(header)]
    for index, (name, values) in enumerate(rows):
        if index == len(result["machines"]):
            lines.append("-" * len(header))
        lines.append(f"{name:<{width}}" + "".join(f"{100 * value:>9.2f}" for value in values))
    count = len(result["official_score_inputs"])
    score_line = f"official score: {100 * result['official_score']:.2f} % (harmonic mean of {count} values)"
    if "official_score_ci95" in result:
        score_line += f", ci95 ±{100 * result['official_score_ci95']:.4f}"
    return "\n".join([*lines, "", score_line]) + "\n"


def _sorted_values(
    frame: pd.DataFrame, column: str, *, files: list[str], renamed: Mapping[str, str], source: str
) -> np.ndarray:
    names = [renamed.get(name, name) for name in frame["file"]]
    problems = clip_name_problems(names, expected=files)
    values = frame[column].to_numpy(dtype=float)
    bad = bad_value_mask(values, kind="score" if column == "score" else "decision")
    if bad.any():
        problems.append(f"{int(bad.sum())} invalid {column} value(s) ({format_examples(np.asarray(names)[bad])})")
    if problems:
        raise AsdError(f"{source}: {'; '.join(problems)}. Write exactly one row per test clip, named as distributed.")
    order = sorted(range(len(names)), key=names.__getitem__)  # names are now exactly the sorted `files`
    return values[order]


def _floored_hmean(values: np.ndarray) -> float:
    return harmonic_mean(np.maximum(values, EPS))


def _paper_table(result: Mapping[str, Any]) -> dict[str, dict[str, float | None]]:
    """The evaluator's per-machine table: per metric its h-mean, a-mean and per-machine mean over sections."""
    overall = result["overall"]
    machines = result["machines"]
    sections = [metrics for by_section in machines.values() for metrics in by_section.values()]

    def row(key: str, h_mean: float, a_mean: float) -> dict[str, float | None]:
        per_machine = {machine: float(np.mean([metrics[key] for metrics in by_section.values()]))
                       for machine, by_section in machines.items()}
        return {"h-mean": h_mean, "a-mean": a_mean, **per_machine}

    return {
        "AUC (source)": row("AUC_source", overall["source_harmonic_mean"]["AUC"],
                            float(np.mean([section["AUC_source"] for section in sections]))),
        "AUC (target)": row("AUC_target", overall["target_harmonic_mean"]["AUC"],
                            float(np.mean([section["AUC_target"] for section in sections]))),
        "pAUC (source, target)": row("pAUC", overall["harmonic_mean"]["pAUC"], overall["arithmetic_mean"]["pAUC"]),
        "TOTAL score": {"h-mean": result["official_score"], "a-mean": float(np.mean(result["official_score_inputs"])),
                        **{machine: None for machine in machines}},
    }


# --- bootstrap ---------------------------------------------------------------------------------------

def bootstrap_indices(section: AlignedSection, *, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """[resamples, clips] clip indices: each (domain, normal/anomaly) group redrawn with replacement from
    itself, so every resample keeps the group sizes the official metrics are defined over."""
    groups = np.char.add(section.domain.astype(str), section.label.astype(str))  # e.g. "source0"
    indices = np.empty((resamples, len(groups)), dtype=np.int64)
    for group in np.unique(groups):
        members = np.flatnonzero(groups == group)
        indices[:, members] = members[rng.integers(0, len(members), size=(resamples, len(members)))]
    return indices


def resampled_section_metrics(section: AlignedSection, indices: np.ndarray) -> dict[str, np.ndarray]:
    """AUC_source, AUC_target and pAUC of the clips each row of ``indices`` [resamples, clips] picks:
    ``section_metrics``' numbers (sklearn's ROC areas, ties included), vectorised over the rows."""
    _, level = np.unique(-section.score, return_inverse=True)  # dense score rank, 0 = most anomalous
    levels = int(level.max()) + 1
    flat_level = (level[indices] + levels * np.arange(len(indices))[:, None]).ravel()  # [resamples * clips]
    label, domain = section.label[indices].ravel(), section.domain[indices].ravel()

    def counts(picked: np.ndarray) -> np.ndarray:  # [resamples, levels] picked clips per score level
        return np.bincount(flat_level[picked], minlength=len(indices) * levels).reshape(len(indices), levels)

    anomalies = counts(label == 1)
    normals = {name: counts((label == 0) & (domain == name)) for name in DOMAINS}
    return {
        "AUC_source": _roc_area(normals["source"], anomalies),
        "AUC_target": _roc_area(normals["target"], anomalies),
        "pAUC": _roc_area(normals["source"] + normals["target"], anomalies, max_fpr=MAX_FPR),
    }


def bootstrap_official_score(
    sections: Sequence[AlignedSection], *, resamples: int = 1000, seed: int = 0
) -> dict[str, float]:
    """Bootstrap spread of the official score of ``sections`` (every machine/section, sorted): each
    resample redraws every section's clips within its (domain, normal/anomaly) groups and recomputes
    the score. Returns the point estimate, the resamples' mean and standard deviation, and their 2.5 %
    and 97.5 % percentiles."""
    rng = np.random.default_rng(seed)
    per_section = [resampled_section_metrics(section, bootstrap_indices(section, resamples=resamples, rng=rng))
                   for section in sections]
    scores = harmonic_mean(np.maximum(official_score_inputs(per_section), EPS), axis=0)  # [resamples]
    low, high = np.percentile(scores, [2.5, 97.5])
    return {
        "official_score": official_score([section_metrics(section) for section in sections]),
        "mean": float(np.mean(scores)),
        "sd": float(np.std(scores, ddof=1)),
        "percentile_2.5": float(low),
        "percentile_97.5": float(high),
        "resamples": resamples,
        "seed": seed,
    }


def _roc_area(normals: np.ndarray, anomalies: np.ndarray, *, max_fpr: float | None = None) -> np.ndarray:
    """Per row, ``roc_auc_score`` (with ``max_fpr``: its McClish-standardised partial area) from clip counts
    per score level [rows, levels], most anomalous level first: the area under the ROC polyline through
    each level's (FPR, TPR), cut at ``max_fpr`` where the segment crosses it, as sklearn interpolates."""
    fpr = np.pad(np.cumsum(normals, axis=1) / normals.sum(axis=1, keepdims=True), ((0, 0), (1, 0)))
    tpr = np.pad(np.cumsum(anomalies, axis=1) / anomalies.sum(axis=1, keepdims=True), ((0, 0), (1, 0)))
    start_fpr, end_fpr, start_tpr, end_tpr = fpr[:, :-1], fpr[:, 1:], tpr[:, :-1], tpr[:, 1:]
    cut_fpr = np.minimum(end_fpr, 1.0 if max_fpr is None else max_fpr)
    width = np.maximum(cut_fpr - start_fpr, 0.0)  # 0 for vertical segments and those beyond max_fpr
    slope = np.divide(end_tpr - start_tpr, end_fpr - start_fpr, out=np.zeros_like(start_tpr), where=width > 0)
    area = np.sum(width * (2 * start_tpr + slope * width) / 2, axis=1)
    if max_fpr is None:
        return area
    min_area, max_area = 0.5 * max_fpr**2, max_fpr
    return 0.5 * (1 + (area - min_area) / (max_area - min_area))
