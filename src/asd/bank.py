"""Memory-bank composition for one machine type and section.

Source bank = source-domain training clips + the supplemental clips judged clean machine sound
(they are source-domain normals); target bank = target-domain training clips. Noise-only
supplemental clips never enter a bank. What a supplemental clip is follows this precedence:

1. config ``supplemental_kinds.<machine>``: ``machine`` or ``noise`` for every clip of that machine
   type; ``auto`` runs the automatic test below on all of them, whatever their names say;
2. otherwise the manifest's ``supplemental_kind`` (parsed from the file name: machine | noise);
3. clips whose kind is ``unknown`` go through the automatic test, decided for them as one set.

Automatic noise-only test (``classify_supplemental``), decided per supplemental SET since all
clips of one machine type are one kind, with a per-clip flag reported for inspection:

* distance rule: d_i = cosine distance of supplemental clip i to its nearest training clip;
  reference = leave-one-out nearest-neighbour distances among the training clips. Clip i is
  *far* when d_i > the 0.99 quantile of the reference: a clean machine clip lies inside the
  training distribution (only ~1 % of training clips are that isolated), a machine-off
  recording lies outside it.
* energy rule (only when per-clip energies are given, e.g. mean log-mel energy): clip i is
  *quiet* when its energy < the 0.01 quantile of the training clips' energies (a machine-off
  recording lacks the machine's sound). Caveat: a clean machine set recorded without the
  background noise can also be quieter; pass energies only where that is not the case.
* a clip is flagged when it is far OR quiet; the set is ``noise`` when MORE than half of its
  clips are flagged (majority vote), else ``machine``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from asd.errors import AsdError
from asd.knn import CosineKNN

DISTANCE_QUANTILE = 0.99
ENERGY_QUANTILE = 0.01
NOISE_MAJORITY = 0.5
REQUIRED_COLUMNS = ("file", "split", "domain", "supplemental_kind")


@dataclass(frozen=True)
class Bank:
    """Source/target bank embeddings [M_domain, D], their files, and a JSON-able composition."""

    source: np.ndarray
    target: np.ndarray
    source_files: list[str]
    target_files: list[str]
    composition: dict

    def domain_banks(self, *, separate: bool = True) -> dict[str, np.ndarray]:
        """Banks for ``knn.score_domains``: one per domain, or one pooled bank when not separate."""
        if separate:
            return {"source": self.source, "target": self.target}
        return {"all": np.concatenate([self.source, self.target])}  # [Ms + Mt, D]


def classify_supplemental(
    train_emb: np.ndarray,
    supp_emb: np.ndarray,
    *,
    train_energy: np.ndarray | None = None,
    supp_energy: np.ndarray | None = None,
) -> tuple[str, np.ndarray, dict]:
    """Automatic noise-only test (rule in the module docstring).

    Returns (``"machine"`` | ``"noise"``, per-clip flags [S] bool, JSON-able statistics).
    """
    if len(train_emb) < 2:
        raise AsdError(
            f"the automatic supplemental test needs at least 2 training clips, got {len(train_emb)}; "
            "declare the kind in config supplemental_kinds (machine or noise) instead."
        )
    if (train_energy is None) != (supp_energy is None):
        raise ValueError("pass both train_energy and supp_energy, or neither")
    knn = CosineKNN(name="training clips").fit(train_emb)
    train_loo = knn.distances(train_emb, 1, exclude_self=True)  # [N]
    supp_distance = knn.distances(supp_emb, 1)  # [S]
    distance_threshold = float(np.quantile(train_loo, DISTANCE_QUANTILE))
    far = supp_distance > distance_threshold
    stats = {
        "rule": (
            f"clip flagged if its distance to the nearest training clip > the {DISTANCE_QUANTILE} quantile of "
            f"training leave-one-out distances, or its energy < the {ENERGY_QUANTILE} quantile of training "
            f"energies; set is noise if more than {NOISE_MAJORITY:.0%} of clips are flagged"
        ),
        "n_clips": int(len(supp_emb)),
        "distance_threshold": distance_threshold,
        "train_loo_median_distance": float(np.median(train_loo)),
        "median_distance": float(np.median(supp_distance)),
        "n_far": int(far.sum()),
        "distances": [float(d) for d in supp_distance],
    }
    flags = far
    if supp_energy is not None:
        energy_threshold = float(np.quantile(train_energy, ENERGY_QUANTILE))
        quiet = np.asarray(supp_energy) < energy_threshold
        flags = far | quiet
        stats.update(
            energy_threshold=energy_threshold,
            train_median_energy=float(np.median(train_energy)),
            median_energy=float(np.median(supp_energy)),
            n_quiet=int(quiet.sum()),
            energies=[float(e) for e in supp_energy],
        )
    stats["n_flagged"] = int(flags.sum())
    stats["flags"] = [bool(flag) for flag in flags]
    kind = "noise" if flags.mean() > NOISE_MAJORITY else "machine"
    return kind, flags, stats


def _automatic_reason(kind: str, stats: dict, clip: int) -> str:
    """Why one clip of a set judged noise was excluded, with the set's and the clip's numbers."""
    clip_part = f"this clip: distance {stats['distances'][clip]:.4f}"
    if "energies" in stats:
        clip_part += f", energy {stats['energies'][clip]:.4g} (threshold {stats['energy_threshold']:.4g})"
    return (
        f"automatic test: set judged {kind} ({stats['n_flagged']}/{stats['n_clips']} clips flagged; median "
        f"distance to nearest training clip {stats['median_distance']:.4f} vs threshold "
        f"{stats['distance_threshold']:.4f}); {clip_part}"
    )


def build_bank(
    manifest_rows: pd.DataFrame,
    embeddings: np.ndarray,
    *,
    name: str,
    kind_override: str | None = None,
    use_supplemental: bool = True,
    test_features: np.ndarray | None = None,
) -> Bank:
    """Compose the memory banks of one machine type and section.

    ``manifest_rows`` (one row per embedding [N, D], columns file, split, domain,
    supplemental_kind) may include test rows, which are ignored. ``kind_override`` is the config
    value (machine | noise | auto | None). ``test_features`` [N, F] are the vectors the automatic test compares (default: the embeddings);
    the pipeline passes each clip's gain-invariant mean log-mel spectrum, which does not depend on the
    model, so every epoch reaches the same verdict.
    """
    missing = [column for column in REQUIRED_COLUMNS if column not in manifest_rows.columns]
    if missing:
        raise AsdError(f"{name}: the manifest lacks columns {missing}; rebuild it with the 'features' rule.")
    if len(manifest_rows) != len(embeddings):
        raise AsdError(
            f"{name}: {len(manifest_rows)} manifest rows but {len(embeddings)} embeddings; "
            "the embeddings are stale, rerun the 'embed' rule."
        )
    if kind_override not in (None, "machine", "noise", "auto"):
        raise AsdError(f"config supplemental_kinds.{name} = {kind_override!r}; use machine, noise or auto.")
    embeddings = np.asarray(embeddings)
    compared = embeddings if test_features is None else np.asarray(test_features)
    split = manifest_rows["split"].to_numpy()
    domain = manifest_rows["domain"].to_numpy()
    files = manifest_rows["file"].astype(str).to_numpy()
    train_source = (split == "train") & (domain == "source")
    train_target = (split == "train") & (domain == "target")
    train = split == "train"
    if not train.any():
        raise AsdError(f"{name}: the manifest has no training clips; check the dataset root and rerun the 'features' rule.")

    supp_rows = np.flatnonzero(split == "supplemental")
    decision: dict = {"kind": None, "decided_by": [], "automatic_test": None}
    if use_supplemental and len(supp_rows):
        kinds, reasons, decided_by, automatic = _judge_supplemental(
            manifest_rows["supplemental_kind"].to_numpy()[supp_rows],
            name=name,
            kind_override=kind_override,
            train_emb=compared[train],
            supp_emb=compared[supp_rows],
            train_energy=None,
            supp_energy=None,
        )
        accepted = supp_rows[kinds == "machine"]
        excluded = [{"file": files[row], "reason": reasons[j]} for j, row in enumerate(supp_rows) if kinds[j] == "noise"]
        decision = {
            "kind": "+".join(sorted(set(kinds.tolist()))),  # machine, noise, or machine+noise if names disagree
            "decided_by": sorted(set(decided_by)),
            "automatic_test": automatic,
        }
    else:
        accepted = supp_rows[:0]
        excluded = [{"file": files[row], "reason": "scoring.use_supplemental is false"} for row in supp_rows]

    source_rows = np.concatenate([np.flatnonzero(train_source), accepted])
    target_rows = np.flatnonzero(train_target)
    composition = {
        "machine": name,
        "counts": {
            "train_source": int(train_source.sum()),
            "train_target": int(train_target.sum()),
            "supplemental_machine": int(len(accepted)),
            "supplemental_excluded": len(excluded),
            "source_bank": int(len(source_rows)),
            "target_bank": int(len(target_rows)),
        },
        "supplemental": decision,
        "excluded": excluded,
        "members": {"source": files[source_rows].tolist(), "target": files[target_rows].tolist()},
    }
    return Bank(
        source=embeddings[source_rows],
        target=embeddings[target_rows],
        source_files=files[source_rows].tolist(),
        target_files=files[target_rows].tolist(),
        composition=composition,
    )


def _judge_supplemental(
    name_kinds: np.ndarray,
    *,
    name: str,
    kind_override: str | None,
    train_emb: np.ndarray,
    supp_emb: np.ndarray,
    train_energy: np.ndarray | None,
    supp_energy: np.ndarray | None,
) -> tuple[np.ndarray, list[str], list[str], dict | None]:
    """Per supplemental clip: kind (machine | noise), the reason, what decided it; plus automatic-test stats."""
    if kind_override in ("machine", "noise"):
        count = len(name_kinds)
        return np.full(count, kind_override), [f"config says {kind_override}"] * count, ["config"] * count, None
    kinds = np.full(len(name_kinds), "unknown", dtype=object) if kind_override == "auto" else name_kinds.astype(object)
    bad = sorted({str(kind) for kind in kinds} - {"machine", "noise", "unknown"})
    if bad:
        raise AsdError(
            f"{name}: manifest column supplemental_kind holds {bad} for supplemental clips "
            "(allowed: machine, noise, unknown); rebuild it with the 'features' rule."
        )
    reasons = [f"name says {kind}" for kind in kinds]
    decided_by = ["file name"] * len(kinds)
    unknown = np.flatnonzero(kinds == "unknown")
    automatic = None
    if len(unknown):
        set_kind, _, automatic = classify_supplemental(
            train_emb,
            supp_emb[unknown],
            train_energy=train_energy,
            supp_energy=None if supp_energy is None else supp_energy[unknown],
        )
        for position, clip in enumerate(unknown):
            kinds[clip] = set_kind
            reasons[clip] = _automatic_reason(set_kind, automatic, position)
            decided_by[clip] = "automatic test"
    return kinds.astype(str), reasons, decided_by, automatic
