"""Memory-bank composition for one machine type and section.

Source bank = source-domain training clips + the supplemental clips judged machine sound
(they are source-domain normals); target bank = target-domain training clips. Noise-only
supplemental clips never enter a bank. What a supplemental clip is follows this precedence:

1. config ``supplemental_kinds.<machine>``: ``machine`` or ``noise`` for every clip of that machine
   type; ``auto`` runs the automatic test below on all of them, whatever their names say;
2. otherwise the manifest's ``supplemental_kind``, parsed from the file name (asd.data.dataset):
   ``machine`` (names saying machine or clean) | ``noise``;
3. clips whose kind is ``unknown`` go through the automatic test, decided for them as one set.

Automatic noise-only test (``classify_supplemental``). A training clip is machine sound + the
factory background. A supplemental set is one of: (A) the machine recorded clean, WITHOUT the
background (as the DCASE 2025 clean clips are); (C) machine + background like the training clips;
(B) the background alone, machine off. All clips of one machine type are one kind, so the test
decides per SET (majority vote) and reports a per-clip flag and numbers for inspection. It
compares the per-clip gain-invariant mean log-mel spectra (``test_features``, see
asd.model.embed.mean_spectrum), so it does not depend on the model: every epoch reaches the same verdict.
Two signs of machine sound, each measured against what the training clips show of themselves:

* distance: d_i = cosine distance of clip i to its nearest training clip; clip i is *far* when
  d_i > the 0.99 quantile of the training clips' leave-one-out nearest-neighbour distances (only
  ~1 % of training clips are that isolated). C lies inside the training distribution; A and B both
  lie outside it (A lacks the background, B the machine), so distance alone cannot tell them apart.
* spectral peaks (only for 128-bin log-mel spectra): what the machine adds to the background is its
  fine structure over frequency (harmonic lines of rotating parts, narrow resonances); factory
  background is broadband. fine(x) = x minus its 9-bin moving average over frequency, after
  subtracting what white noise reads through the same front end (the lowest Kaldi mel filters each
  cover one FFT bin with weights from 0 to 1, a ripple every spectrum shares) and leaving out the
  nearly empty filters. The peak share of clip i is s_i = <fine(x_i), fine(t)> / |fine(t)|^2, t the
  training clip whose fine structure is most similar (cosine) to the clip's: how much of a matching
  training clip's peaks the clip carries. A: s >= 1 (no background fills the valleys between the
  lines); C: s ~ 1; B: s ~ 0 (the machine's lines are gone). Clip i *lacks the peaks* when s_i < 0.5,
  half-way. Measured on synthetic tonal machines (tests/test_clean_supplemental.py, test_bank.py)
  and the demo: A 1.1-1.4, C 0.8-1.1, B below 0.25.
* energy (only when per-clip energies are given, e.g. mean log-mel energy): clip i is *quiet* when
  its energy < the 0.01 quantile of the training clips' energies.
* a clip is flagged noise-only when it is (far or quiet) and, where the peak test runs, lacks the
  peaks; the set is ``noise`` when MORE than half of its clips are flagged, else ``machine``.

Every verdict is logged as a warning with these numbers and recorded under
``supplemental.automatic_test`` of the composition (per clip: distances, peak shares, flags).
Limitation: the peak test assumes the fine structure of the training clips is mostly the machine's.
A machine without tonal structure in a hall whose background has it (another machine running)
inverts it; declare such machine types in config ``supplemental_kinds``. The recorded training
leave-one-out peak shares and the set's peak shares show the case.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from asd.errors import AsdError
from asd.scoring.knn import CosineKNN

log = logging.getLogger(__name__)

DISTANCE_QUANTILE = 0.99
ENERGY_QUANTILE = 0.01
NOISE_MAJORITY = 0.5
PEAK_SHARE_THRESHOLD = 0.5  # a clip lacks the machine's peaks below half a matching training clip's
PEAK_SMOOTH_BINS = 9  # moving-average width (mel bins) whose residual is the spectral fine structure
MIN_FILTER_WEIGHT = 0.1  # mel filters with less total weight are nearly empty: left out of the peak test
SPECTRUM_BINS = 128  # asd.model.beats.NUM_MEL_BINS, the width of asd.model.embed.mean_spectrum's spectra
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


@functools.cache
def _flat_reference() -> tuple[np.ndarray, np.ndarray]:
    """asd.model.beats.flat_spectrum_reference, computed once per process; torch is imported only when the peak
    test runs (supplemental clips of unknown kind), so a scoring job without them stays torch-free."""
    from asd.model.beats import NUM_MEL_BINS, flat_spectrum_reference

    assert NUM_MEL_BINS == SPECTRUM_BINS
    return flat_spectrum_reference(MIN_FILTER_WEIGHT)


def spectral_fine_structure(spectra: np.ndarray) -> np.ndarray:
    """[N, 128] mean log-mel spectra -> [N, B] their fine structure (rule in the module docstring)."""
    reference, usable = _flat_reference()
    spectra = np.asarray(spectra, dtype=np.float64)
    if spectra.ndim != 2 or spectra.shape[1] != SPECTRUM_BINS:
        raise ValueError(f"the peak test needs [N, {SPECTRUM_BINS}] log-mel spectra, got shape {spectra.shape}")
    flat = (spectra - reference)[:, usable]  # [N, B]
    half = PEAK_SMOOTH_BINS // 2
    padded = np.pad(flat, ((0, 0), (half, half)), mode="edge")
    smooth = np.lib.stride_tricks.sliding_window_view(padded, PEAK_SMOOTH_BINS, axis=1).mean(-1)  # [N, B]
    return flat - smooth


def peak_shares(train_fine: np.ndarray, clip_fine: np.ndarray, *, exclude_self: bool = False) -> np.ndarray:
    """[S] share of its best-matching training clip's fine structure that each clip carries.

    ``exclude_self``: the clips are the training clips themselves (leave-one-out reference).
    """
    def unit(x):
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    similarity = unit(clip_fine) @ unit(train_fine).T  # [S, N] cosine of the fine structures
    if exclude_self:
        np.fill_diagonal(similarity, -np.inf)
    match = train_fine[similarity.argmax(1)]  # [S, B]
    return (clip_fine * match).sum(1) / np.maximum((match**2).sum(1), 1e-12)


def classify_supplemental(
    train_emb: np.ndarray,
    supp_emb: np.ndarray,
    *,
    spectra: bool = False,
    train_energy: np.ndarray | None = None,
    supp_energy: np.ndarray | None = None,
) -> tuple[str, np.ndarray, dict]:
    """Automatic noise-only test (rule in the module docstring).

    ``train_emb`` [N, F], ``supp_emb`` [S, F]: the compared vectors; ``spectra`` says they are
    128-bin mean log-mel spectra, which adds the spectral-peak test to the distance test.
    Returns (``"machine"`` | ``"noise"``, per-clip flags [S] bool, JSON-able statistics with a
    one-line ``summary``).
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
    signs = "far" + (" or quiet" if supp_energy is not None else "")
    stats = {
        "rule": (
            f"clip flagged if ({signs}){' and without peaks' if spectra else ''}; far: distance to the nearest "
            f"training clip > the {DISTANCE_QUANTILE} quantile of training leave-one-out distances"
            + (f"; quiet: energy < the {ENERGY_QUANTILE} quantile of training energies" if supp_energy is not None
               else "")
            + (f"; without peaks: peak share (share of the best-matching training clip's spectral fine structure "
               f"the clip carries) < {PEAK_SHARE_THRESHOLD}" if spectra else "")
            + f"; set is noise if more than {NOISE_MAJORITY:.0%} of clips are flagged"
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
    if spectra:
        train_fine = spectral_fine_structure(train_emb)
        shares = peak_shares(train_fine, spectral_fine_structure(supp_emb))  # [S]
        train_shares = peak_shares(train_fine, train_fine, exclude_self=True)  # [N]
        without_peaks = shares < PEAK_SHARE_THRESHOLD
        flags = flags & without_peaks
        stats.update(
            peak_share_threshold=PEAK_SHARE_THRESHOLD,
            train_loo_median_peak_share=float(np.median(train_shares)),
            train_loo_q01_peak_share=float(np.quantile(train_shares, 0.01)),
            median_peak_share=float(np.median(shares)),
            n_without_peaks=int(without_peaks.sum()),
            peak_shares=[float(s) for s in shares],
        )
    kind = "noise" if flags.mean() > NOISE_MAJORITY else "machine"
    stats["n_flagged"] = int(flags.sum())
    stats["flags"] = [bool(flag) for flag in flags]
    stats["kind"] = kind
    stats["summary"] = _summary(stats)
    return kind, flags, stats


def _summary(stats: dict) -> str:
    """The verdict and its numbers in one line (the logged warning, also kept in the bank JSON)."""
    parts = [
        f"{stats['n_far']} far from the training clips (median distance {stats['median_distance']:.4f} vs "
        f"threshold {stats['distance_threshold']:.4f}, training median {stats['train_loo_median_distance']:.4f})"
    ]
    if "energies" in stats:
        parts.append(f"{stats['n_quiet']} quiet (median energy {stats['median_energy']:.4g} vs threshold "
                     f"{stats['energy_threshold']:.4g})")
    if "peak_shares" in stats:
        parts.append(f"{stats['n_without_peaks']} without the training clips' spectral peaks (median peak share "
                     f"{stats['median_peak_share']:.2f} vs threshold {stats['peak_share_threshold']:.2f}, training "
                     f"median {stats['train_loo_median_peak_share']:.2f})")
    return (f"set judged {stats['kind']}: {stats['n_flagged']}/{stats['n_clips']} clips flagged noise-only "
            f"(majority needed: more than {NOISE_MAJORITY:.0%}); " + "; ".join(parts))


def _automatic_reason(kind: str, stats: dict, clip: int) -> str:
    """Why one clip of a set judged noise was excluded, with the set's and the clip's numbers."""
    clip_part = f"this clip: distance {stats['distances'][clip]:.4f}"
    if "energies" in stats:
        clip_part += f", energy {stats['energies'][clip]:.4g} (threshold {stats['energy_threshold']:.4g})"
    if "peak_shares" in stats:
        clip_part += f", peak share {stats['peak_shares'][clip]:.2f} (threshold {stats['peak_share_threshold']:.2f})"
    peaks = (f", median peak share {stats['median_peak_share']:.2f} vs threshold {stats['peak_share_threshold']:.2f}"
             if "peak_shares" in stats else "")
    return (
        f"automatic test: set judged {kind} ({stats['n_flagged']}/{stats['n_clips']} clips flagged; median "
        f"distance to nearest training clip {stats['median_distance']:.4f} vs threshold "
        f"{stats['distance_threshold']:.4f}{peaks}); {clip_part}"
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
    value (machine | noise | auto | None). ``test_features`` [N, F] are the vectors the automatic
    test compares (default: the embeddings, distance test only); the pipeline passes each clip's
    gain-invariant mean log-mel spectrum [N, 128] (asd.model.embed.mean_spectrum), which adds the
    spectral-peak test and does not depend on the model, so every epoch reaches the same verdict.
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
    spectra = test_features is not None and compared.ndim == 2 and compared.shape[1] == SPECTRUM_BINS
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
            spectra=spectra,
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
    spectra: bool,
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
            spectra=spectra,
            train_energy=train_energy,
            supp_energy=None if supp_energy is None else supp_energy[unknown],
        )
        automatic["peak_test"] = "run" if spectra else (
            f"not run: the compared vectors ({supp_emb.shape[1]} values per clip) are not 128-bin log-mel spectra"
        )
        log.warning(
            "%s: %d supplemental clip(s) of unknown kind went to the automatic test: %s%s. Declare the kind in "
            "config supplemental_kinds.%s (machine or noise) if this is wrong.",
            name, len(unknown), automatic["summary"],
            "" if spectra else f"; peak test {automatic['peak_test']}", name,
        )
        for position, clip in enumerate(unknown):
            kinds[clip] = set_kind
            reasons[clip] = _automatic_reason(set_kind, automatic, position)
            decided_by[clip] = "automatic test"
    return kinds.astype(str), reasons, decided_by, automatic
