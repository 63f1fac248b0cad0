"""Multi-epoch score fusion: z-normalise each epoch with its TRAINING leave-one-out scores, then average.

Test statistics never enter: each epoch's scores are shifted and scaled by the mean and standard
deviation (population, ddof = 0) of that epoch's training clips' leave-one-out scores, so the
fused score of a test clip does not depend on the other test clips.
"""

from __future__ import annotations

import numpy as np

import logging


from asd.scoring.decision import decide, gamma_threshold
from asd.errors import AsdError
from asd.io import write_csv
from asd.store import ROW_COLUMNS, order_score_table, read_scores

log = logging.getLogger(__name__)


def zscore_params(train_loo_scores: np.ndarray, *, name: str) -> tuple[float, float]:
    """Mean and standard deviation (ddof = 0) of training leave-one-out scores [N]."""
    scores = np.asarray(train_loo_scores, dtype=np.float64)
    if scores.size < 2 or not np.all(np.isfinite(scores)):
        raise AsdError(
            f"{name}: z-normalisation needs at least 2 finite training leave-one-out scores, got "
            f"{scores.size} ({int(np.sum(~np.isfinite(scores)))} not finite); rerun the 'score' rule."
        )
    std = float(scores.std())
    if std == 0:
        raise AsdError(
            f"{name}: every training leave-one-out score equals {scores[0]:.6g}, so z-normalisation is "
            "undefined; use a single-epoch system or check the embeddings (identical clips?)."
        )
    return float(scores.mean()), std


def fuse(
    epoch_scores: dict[int, np.ndarray],
    epoch_train_loo: dict[int, np.ndarray],
    epochs: list[int],
    *,
    name: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Fused test scores [Q] and fused training leave-one-out scores [N] over ``epochs``.

    Each epoch e contributes (s_e - mean_e) / std_e with (mean_e, std_e) from its training
    leave-one-out scores; a single epoch is valid (its scores are just z-normalised).
    """
    if not epochs:
        raise AsdError(f"{name}: the ensemble lists no epochs; give it at least one in config ensembles.")
    for epoch in epochs:
        if epoch not in epoch_scores or epoch not in epoch_train_loo:
            raise AsdError(
                f"{name}: ensemble epoch {epoch} has no scores; add it to scoring.epochs (and train at least "
                f"{epoch} epochs) or remove it from the ensemble in config ensembles."
            )
    test_lengths = {len(epoch_scores[epoch]) for epoch in epochs}
    train_lengths = {len(epoch_train_loo[epoch]) for epoch in epochs}
    if len(test_lengths) > 1 or len(train_lengths) > 1:
        raise AsdError(
            f"{name}: epochs {epochs} scored different numbers of clips (test {sorted(test_lengths)}, "
            f"train {sorted(train_lengths)}); rerun the 'score' rule."
        )
    fused_test, fused_train = [], []
    for epoch in epochs:
        mean, std = zscore_params(epoch_train_loo[epoch], name=f"{name} epoch {epoch}")
        fused_test.append((np.asarray(epoch_scores[epoch], dtype=np.float64) - mean) / std)
        fused_train.append((np.asarray(epoch_train_loo[epoch], dtype=np.float64) - mean) / std)
    return np.mean(fused_test, axis=0), np.mean(fused_train, axis=0)  # [epochs, Q] -> [Q], [epochs, N] -> [N]


def fuse_epochs(*, score_paths: list[str], epochs: list[int], out_path: str, machine: str, decision: dict) -> None:
    """Ensemble: z-normalise each epoch with its bank (training) leave-one-out scores, average, decide."""
    tables = {epoch: read_scores(path).set_index(["role", "split", "file"]) for epoch, path in zip(epochs, score_paths)}
    tests = [t.xs("test", level="role", drop_level=False).index for t in tables.values()]
    if any(not idx.equals(tests[0]) for idx in tests):
        raise AsdError(f"{machine}: epochs {epochs} scored different test clips ({score_paths}); rerun the 'score' rule.")
    # The automatic noise test may admit different supplemental clips at different epochs: fuse the
    # bank clips every epoch shares, so each epoch's normalisation uses the same training clips.
    bank = sorted(set.intersection(*(set(t.xs("bank", level="role", drop_level=False).index) for t in tables.values())))
    keys = list(tests[0]) + bank
    fused_test, fused_bank = fuse({e: t.loc[tests[0], "score"].to_numpy() for e, t in tables.items()},
                                  {e: t.loc[bank, "score"].to_numpy() for e, t in tables.items()},
                                  epochs, name=machine)
    out = tables[epochs[0]].loc[keys, ROW_COLUMNS[2:]].reset_index()
    out["score"] = np.concatenate([fused_test, fused_bank])
    threshold = gamma_threshold(fused_bank, decision["quantile"], name=f"{machine} ensemble {epochs}")
    out["decision"] = decide(out["score"].to_numpy(), threshold)
    write_csv(out_path, order_score_table(out))
    log.info("%s: fused epochs %s, threshold %.4f", machine, epochs, threshold)
