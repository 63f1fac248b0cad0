"""End-to-end wiring of the scoring and evaluation stages on synthetic embeddings (no network, no Snakemake).

Clearly separable embeddings of a labelled dev-style fold (two machine types, source and target
domains, few target training clips, named supplemental clips) go through the functions the rules
call and the files they hand each other: embedding HDF5 (the embed stage's writer) -> ``asd.rules.score``
(banks, KNN scores of every system, the multi-epoch ensemble) -> ``asd.rules.evaluate`` (official
metrics JSON, Table 1 CSV). Clean, every epoch system and the ensemble must score > 0.9 everywhere.

The guard is that this test can fail: the other tests corrupt one intermediate FILE between two real
stages and require a clearly worse result, for the three wiring bugs that would otherwise pass unseen:

1. scores misaligned with their clips (embeddings permuted against the manifest, or a score CSV's
   score column shuffled against its file column) -> AUCs near 0.5;
2. test clips leaking into the memory bank (one domain's anomalous test embeddings added as training
   rows) -> those anomalies find themselves in the bank and rank below every normal clip, so the AUCs
   fall to the share of anomalies not leaked (1/3 or 2/3);
3. a flipped score sign (in the files evaluation reads, or in the epoch files the ensemble fuses)
   -> AUCs below 0.1.

The frozen system gets uninformative (random) embeddings, so a good ensemble also shows that the
ensemble fuses the epoch files and not the frozen one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

import asd.config as cfg
from asd import rules
from asd.data.dataset import MANIFEST_COLUMNS, parse_clip_name
from asd.model.embed import _write_embeddings  # the embed stage's writer: the files below are the pipeline's own layout
from asd.scoring.ensemble import fuse_epochs
from asd.io import write_csv
from asd.store import load_embeddings, read_scores

FOLD = "dev"
MACHINES = ["fanA", "pumpB"]  # pumpB: hidden attributes (noAttribute), as some DCASE machine types
# What the Snakefile derives from the config (workflow/rules/common.smk): systems, scored systems, score params.
CONFIG = {"train": {"epochs": 2}, "scoring": {"epochs": "all", "k": 1, "separate_domain_banks": True,
                                              "domain_normalisation": False, "use_supplemental": True},
          "ensembles": {"ensemble": [1, 2]}, "decision": {"quantile": 0.9},
          # the paper's scorer (primary: plain file names) and a second one, whose files are <system>@kmeans
          "scorers": {"knn": {"method": "knn"}, "kmeans": {"method": "kmeans", "clusters": 4}}}
SYSTEMS = cfg.systems(CONFIG)  # [frozen, epoch_1, epoch_2, ensemble]: every system with a table
TABLED = cfg.score_sets(CONFIG)  # SYSTEMS, then SYSTEMS@kmeans
SCORED = [f"epoch_{e}" for e in cfg.scored_epochs(CONFIG)] + [cfg.FROZEN]  # systems with embeddings
EPOCH_SYSTEMS = ["epoch_1", "epoch_2", "ensemble"]  # the systems that must be good
DIM = 32
# (domain, attribute, training clips): many source clips over two attribute classes, few target clips.
CLASSES = [("source", "spd_1", 20), ("source", "spd_2", 20), ("target", "spd_3", 3)]
TEST_PER_CLASS = 12  # normal and anomalous test clips per class: 24 + 24 source, 12 + 12 target
N_SUPP_MACHINE, N_SUPP_NOISE = 6, 4
OFFICIAL = ("AUC_source", "AUC_target", "pAUC")


# ---------------------------------------------------------------- the fold: names, manifest, embeddings

def fold_manifest(machine: str) -> pd.DataFrame:
    """The features file's manifest of one machine type: DCASE names parsed as asd.data.dataset parses them."""
    names = []
    for c, (domain, attribute, n_train) in enumerate(CLASSES):
        attributes = "noAttribute" if machine == "pumpB" else attribute
        names += [("train", f"section_00_{domain}_train_normal_{100 * c + i:04d}_{attributes}.wav")
                  for i in range(n_train)]
        for label in ("normal", "anomaly"):
            names += [("test", f"section_00_{domain}_test_{label}_{100 * c + i:04d}_{attributes}.wav")
                      for i in range(TEST_PER_CLASS)]
    names += [("supplemental", f"section_00_machine_{i:04d}_.wav") for i in range(N_SUPP_MACHINE)]
    names += [("supplemental", f"section_00_noise_{i:04d}.wav") for i in range(N_SUPP_NOISE)]
    rows = [dict(dataset="synthetic", machine=machine, split=split, file=name,
                 path=f"/data/{machine}/{split}/{name}", duration=10.0, sample_rate=16000, channels=1,
                 **{k: v for k, v in parse_clip_name(name, split=split).items() if k != "index"})
            for split, name in names]
    manifest = pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))
    return manifest.sort_values(["split", "file"], ignore_index=True)  # build_manifest's order


def class_of(row) -> int:
    """Index into CLASSES of a train/test clip (from its domain and its index block)."""
    return int(row["file"].split("_")[5]) // 100


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def synthetic_embeddings(manifest: pd.DataFrame, rng: np.random.Generator, *, informative: bool) -> np.ndarray:
    """[N, DIM] unit vectors: normals near their class centre, anomalies pushed along another direction.

    Each system gets its own random orthonormal basis (an epoch's model embeds into its own space);
    ``informative=False`` gives random vectors (the uninformative frozen baseline).
    """
    if not informative:
        return unit(rng.standard_normal((len(manifest), DIM))).astype(np.float32)
    basis = np.linalg.qr(rng.standard_normal((DIM, DIM)))[0]  # orthonormal columns
    centres, anomaly, noise_only = basis[:, :3], basis[:, 3:6], basis[:, 6]
    vectors = []
    for _, row in manifest.iterrows():
        if row["split"] == "supplemental":
            centre = centres[:, 0] if row["supplemental_kind"] == "machine" else noise_only
        else:
            centre = centres[:, class_of(row)]
            if row["label"] == "anomaly":  # clearly away from every normal clip
                centre = centre + anomaly @ unit(rng.standard_normal(3))
        vectors.append(unit(centre + rng.normal(0, 0.03, DIM)))
    return np.asarray(vectors, dtype=np.float32)


def embedding_path(root: Path, machine: str, system: str) -> Path:
    return root / f"results/embeddings/{FOLD}/{machine}/{system}.h5"


def embed_stage(root: Path, seed: int = 0) -> None:
    """What the embed rule writes: one HDF5 per machine type and scored system."""
    rng = np.random.default_rng(seed)
    for machine in MACHINES:
        manifest = fold_manifest(machine)
        spectrum = rng.standard_normal((len(manifest), 128)).astype(np.float32)  # model-independent, as in embed
        for system in SCORED:
            epoch = 0 if system == cfg.FROZEN else int(system.removeprefix("epoch_"))
            vectors = synthetic_embeddings(manifest, rng, informative=system != cfg.FROZEN)
            _write_embeddings(str(embedding_path(root, machine, system)), vectors, features_path=f"{machine}.h5",
                              source=system, spectrum=spectrum, manifest=manifest,
                              attrs=dict(epoch=epoch, system=system, backbone="synthetic embeddings",
                                         random_init=False, precision="fp32"))
    train_log = root / f"results/models/{FOLD}/train_log.csv"
    train_log.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"epoch": [1, 2], "loss": [2.0, 1.0], "accuracy": [0.5, 0.9],
                  "backbone": ["synthetic embeddings"] * 2}).to_csv(train_log, index=False)


# ---------------------------------------------------------------- the real stages, called as the rules are

class Files(list):
    """A Snakemake-like named list: iterable, with named entries as attributes."""

    def __init__(self, items=(), **named):
        super().__init__(items)
        self.__dict__.update(named)


def score_path(root: Path, machine: str, system: str) -> Path:
    return root / f"results/scores/{FOLD}/{machine}/{system}.csv"


def score_stage(root: Path) -> None:
    """asd.rules.score for every machine type, with the inputs, outputs and params of workflow/rules/score.smk."""
    for machine in MACHINES:
        out = lambda kind, systems, ext: [str(root / f"results/{kind}/{FOLD}/{machine}/{s}.{ext}") for s in systems]
        job = SimpleNamespace(
            input=Files(str(embedding_path(root, machine, s)) for s in SCORED),
            output=Files(banks=out("banks", SCORED, "json"), scores=out("scores", cfg.score_sets(CONFIG, SCORED), "csv"),
                         ensembles=out("scores", cfg.score_sets(CONFIG, list(CONFIG["ensembles"])), "csv")),
            params=SimpleNamespace(systems=SCORED, ensembles=CONFIG["ensembles"], kind_override=None,
                                   scorers=CONFIG["scorers"],
                                   use_supplemental=CONFIG["scoring"]["use_supplemental"],
                                   scoring={k: v for k, v in CONFIG["scoring"].items()
                                            if k not in ("epochs", "use_supplemental")},
                                   decision=CONFIG["decision"]),
            wildcards=SimpleNamespace(machine=machine, fold=FOLD), log=[])
        rules.score(job)


def ensemble_stage(root: Path) -> None:
    """Only the ensemble step of the score job (asd.scoring.ensemble.fuse_epochs, as score_machine calls it)."""
    for machine in MACHINES:
        for name, epochs in CONFIG["ensembles"].items():
            fuse_epochs(score_paths=[str(score_path(root, machine, f"epoch_{e}")) for e in epochs], epochs=epochs,
                        out_path=str(score_path(root, machine, name)), machine=machine, decision=CONFIG["decision"])


def evaluate_stage(root: Path) -> dict:
    """asd.rules.evaluate with the inputs of workflow/rules/report.smk; returns what it wrote:
    {system: {"metrics": {machine: official metrics}, "table": Table 1 (percent)}}."""
    out = lambda kind, ext: [str(root / f"results/{kind}/{FOLD}/{s}.{ext}") for s in TABLED]
    job = SimpleNamespace(
        input=Files(scores=[str(score_path(root, m, s)) for s in TABLED for m in MACHINES],  # set-major
                    train_log=str(root / f"results/models/{FOLD}/train_log.csv")),
        output=Files(metrics=out("metrics", "json"), tables=out("tables", "csv"), markdown=out("tables", "md"),
                     summary_csv=str(root / f"results/tables/{FOLD}/summary.csv"),
                     summary_md=str(root / f"results/tables/{FOLD}/summary.md")),
        params=SimpleNamespace(machines=MACHINES, systems=TABLED, scorers=list(CONFIG["scorers"]), ground_truth=None),
        wildcards=SimpleNamespace(fold=FOLD), log=[])
    rules.evaluate(job)
    results = {}
    for system, metrics_path, table_path in zip(TABLED, job.output.metrics, job.output.tables):
        metrics = json.loads(Path(metrics_path).read_text())
        results[system] = {"metrics": {m["machine"]: m for m in metrics["machines"]},
                           "table": pd.read_csv(table_path).set_index("metric")}
    return results


def official(results: dict, system: str) -> np.ndarray:
    """[machines x 3] AUC_source, AUC_target, pAUC of one system."""
    return np.array([[results[system]["metrics"][m][key] for key in OFFICIAL] for m in MACHINES])


def hmean(results: dict, system: str) -> float:
    """The official score of a system: Table 1's hmean row, All (hmean) column, as a fraction."""
    return results[system]["table"].loc["hmean", "All (hmean)"] / 100


# ---------------------------------------------------------------- file corruptions between stages

def rewrite_embeddings(path: Path, change) -> None:
    """Load an embedding file, ``change(embeddings, spectrum, manifest)`` -> new triple, write it back."""
    embeddings, spectrum, manifest, attrs = load_embeddings(path)
    embeddings, spectrum, manifest = change(embeddings, spectrum, manifest)
    attrs.pop("complete")
    _write_embeddings(str(path), embeddings, features_path="corrupted", source="corrupted", spectrum=spectrum,
                      manifest=manifest, attrs=attrs)


def rewrite_scores(path: Path, change) -> None:
    table = read_scores(str(path))
    write_csv(path, change(table))


@pytest.fixture(scope="module")
def embedded(tmp_path_factory) -> Path:
    """The embed stage's output, written once; tests copy it (the torch-free stages then run per test)."""
    root = tmp_path_factory.mktemp("embedded")
    embed_stage(root)
    return root


@pytest.fixture(scope="module")
def scored(tmp_path_factory, embedded) -> Path:
    """Embeddings plus the score stage's output, built once."""
    root = tmp_path_factory.mktemp("scored")
    shutil.copytree(embedded, root, dirs_exist_ok=True)
    score_stage(root)
    return root


def copy_of(root: Path, tmp_path: Path) -> Path:
    shutil.copytree(root, tmp_path / "work")
    return tmp_path / "work"


# ---------------------------------------------------------------- tests

def test_clean_pipeline_separates_every_machine_domain_and_system(tmp_path, scored):
    """Banks hold exactly the training and machine supplemental clips; every epoch system and the ensemble
    scores > 0.9 on every AUC and pAUC of every machine type, and in Table 1."""
    root = copy_of(scored, tmp_path)
    results = evaluate_stage(root)
    for machine in MACHINES:
        bank = json.loads((root / f"results/banks/{FOLD}/{machine}/epoch_1.json").read_text())
        assert bank["counts"] == {"train_source": 40, "train_target": 3, "supplemental_machine": N_SUPP_MACHINE,
                                  "supplemental_excluded": N_SUPP_NOISE, "source_bank": 40 + N_SUPP_MACHINE,
                                  "target_bank": 3}
        members = bank["members"]["source"] + bank["members"]["target"]
        assert not any("_test_" in name or "noise" in name for name in members)
        test = read_scores(str(score_path(root, machine, "ensemble")))
        test = test[test.role == "test"]
        assert len(test) == 2 * TEST_PER_CLASS * len(CLASSES) and test["file"].str.contains("_test_").all()
    for system in EPOCH_SYSTEMS + [f"{s}@kmeans" for s in EPOCH_SYSTEMS]:
        assert (official(results, system) > 0.9).all(), (system, official(results, system))
        assert hmean(results, system) > 0.9
        table = results[system]["table"]
        assert (table.loc[["AUC Source", "AUC Target", "pAUC", "hmean"], MACHINES] > 90).all().all()
    # The frozen system's embeddings are random: the ensemble's result comes from the epoch files.
    assert hmean(results, cfg.FROZEN) < 0.8 and hmean(results, f"{cfg.FROZEN}@kmeans") < 0.8


@pytest.mark.parametrize("where", ["embeddings vs manifest", "score column vs file column"])
def test_misaligned_scores_and_labels_fall_to_chance(tmp_path, embedded, scored, where):
    """Scores no longer belong to the clips named beside them: AUCs near 0.5 (clean: 1.0)."""
    rng = np.random.default_rng(1)
    if where == "embeddings vs manifest":  # between embed and score: test rows' vectors permuted, names kept
        root = copy_of(embedded, tmp_path)

        def permute_test_rows(embeddings, spectrum, manifest):
            test = np.flatnonzero(manifest["split"].to_numpy() == "test")
            embeddings[test] = embeddings[rng.permutation(test)]
            return embeddings, spectrum, manifest

        for machine in MACHINES:
            for system in SCORED:
                rewrite_embeddings(embedding_path(root, machine, system), permute_test_rows)
        score_stage(root)
    else:  # between score and evaluate: each score file's test scores shuffled against their file names
        root = copy_of(scored, tmp_path)

        def shuffle_test_scores(table):
            test = np.flatnonzero(table["role"].to_numpy() == "test")
            table.loc[test, "score"] = table.loc[rng.permutation(test), "score"].to_numpy()
            return table

        for machine in MACHINES:
            for system in SYSTEMS:
                rewrite_scores(score_path(root, machine, system), shuffle_test_scores)
    results = evaluate_stage(root)
    for system in EPOCH_SYSTEMS:
        aucs = official(results, system)[:, :2]  # AUC_source, AUC_target per machine
        assert abs(aucs.mean() - 0.5) < 0.15 and (aucs < 0.8).all(), (system, aucs)
        assert hmean(results, system) < 0.7


@pytest.mark.parametrize("domain", ["source", "target"])
def test_test_clips_leaking_into_the_bank_are_caught(tmp_path, embedded, domain):
    """Between embed and score: one domain's anomalous test clips also appear as training clips."""
    root = copy_of(embedded, tmp_path)

    def leak(embeddings, spectrum, manifest):
        rows = np.flatnonzero(((manifest["split"] == "test") & (manifest["label"] == "anomaly")
                               & (manifest["domain"] == domain)).to_numpy())
        copies = manifest.iloc[rows].assign(split="train", label="normal")
        copies["file"] = copies["file"].str.replace("_test_anomaly_", "_train_normal_9", regex=False)
        return (np.concatenate([embeddings, embeddings[rows]]), np.concatenate([spectrum, spectrum[rows]]),
                pd.concat([manifest, copies], ignore_index=True))

    for machine in MACHINES:
        for system in SCORED:
            rewrite_embeddings(embedding_path(root, machine, system), leak)
    score_stage(root)
    leaked = TEST_PER_CLASS * sum(c[0] == domain for c in CLASSES)
    for machine in MACHINES:
        bank = json.loads((root / f"results/banks/{FOLD}/{machine}/epoch_1.json").read_text())
        assert bank["counts"][f"train_{domain}"] == sum(c[2] for c in CLASSES if c[0] == domain) + leaked
        # The leaked anomalies find their own copies in the bank: the ensemble ranks them below every normal clip.
        test = read_scores(str(score_path(root, machine, "ensemble"))).query("role == 'test'")
        hit = (test["label"] == "anomaly") & (test["domain"] == domain)
        assert test.loc[hit, "score"].max() < test.loc[test["label"] == "normal", "score"].min()
    results = evaluate_stage(root)
    kept = 1 - leaked / (TEST_PER_CLASS * len(CLASSES))  # share of anomalies not leaked: 1/3 (source), 2/3 (target)
    for system in EPOCH_SYSTEMS:
        aucs = official(results, system)[:, :2]  # clean: 1.0; now at most the share of anomalies still unseen
        assert (aucs < kept + 0.05).all(), (system, aucs)
        assert hmean(results, system) < 0.8


@pytest.mark.parametrize("where", ["score files before evaluation", "epoch score files before the ensemble"])
def test_flipped_score_sign_inverts_the_aucs(tmp_path, scored, where):
    """Negated scores (lower = more anomalous): AUCs below 0.1 (clean: 1.0), also through the ensemble's
    z-normalisation."""
    root = copy_of(scored, tmp_path)
    negate = lambda table: table.assign(score=-table["score"])
    flipped = SYSTEMS if where == "score files before evaluation" else [f"epoch_{e}" for e in cfg.scored_epochs(CONFIG)]
    for machine in MACHINES:
        for system in flipped:
            rewrite_scores(score_path(root, machine, system), negate)
    if where == "epoch score files before the ensemble":
        ensemble_stage(root)  # the ensemble re-fused from the flipped epoch files
    results = evaluate_stage(root)
    for system in EPOCH_SYSTEMS:
        assert (official(results, system)[:, :2] < 0.1).all(), (system, official(results, system))
        assert hmean(results, system) < 0.1
