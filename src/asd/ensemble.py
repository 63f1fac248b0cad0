"""Multi-epoch score fusion: z-normalise each epoch with its TRAINING leave-one-out scores, then average.

Test statistics never enter: each epoch's scores are shifted and scaled by the mean and standard
deviation (population, ddof = 0) of that epoch's training clips' leave-one-out scores, so the
fused score of a test clip does not depend on the other test clips.
"""

from __future__ import annotations

import numpy as np

from asd.errors import AsdError


def zscore_params(train_loo_scores: np.ndarray, *, name: str) -> tuple[float, float]:
    """Mean and standard deviation (ddof = 0) of training leave-one-out scores [N]."""
    scores = np.asarray(train_loo_scores, dtype=np.float64)
    if scores.size < 2 or not np.all(np.isfinite(scores)):
        raise AsdError(
            f"{name}: z-normalisation needs at least 2 finite training leave-one-out scores, got "
            f"{scores.size} ({int(np.sum(~np.isfinite(scores)))} not finite); rerun the knn step."
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
            f"train {sorted(train_lengths)}); rerun the knn step for these epochs."
        )
    fused_test, fused_train = [], []
    for epoch in epochs:
        mean, std = zscore_params(epoch_train_loo[epoch], name=f"{name} epoch {epoch}")
        fused_test.append((np.asarray(epoch_scores[epoch], dtype=np.float64) - mean) / std)
        fused_train.append((np.asarray(epoch_train_loo[epoch], dtype=np.float64) - mean) / std)
    return np.mean(fused_test, axis=0), np.mean(fused_train, axis=0)  # [epochs, Q] -> [Q], [epochs, N] -> [N]
