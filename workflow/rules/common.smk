# Helpers shared by the other modules (config queries, wildcard constraints, input functions).
# Job shape: one job per dataset x machine type for features, per fold for training (GPU), per fold x
# machine type for embeddings (GPU, every epoch in one job) and for scoring (banks, KNN of every
# epoch, ensembles), per fold for evaluation (labels enter only here), plots and the submission.
import sys
from pathlib import Path

import asd.config as cfg
from asd.errors import AsdError
from asd.data.dataset import machine_files
from asd.fingerprint import STAGE_VERSIONS, backbone_identity, recorded_backbone_label, resolve_checkpoint


FOLDS = list(config["folds"])
DATASETS = list(config["datasets"])
ENSEMBLES = list(config["ensembles"])
TRAINED_EPOCHS = list(range(1, config["train"]["epochs"] + 1))
SCORED_EPOCHS = cfg.scored_epochs(config)
# Those with embeddings, banks and KNN scores (the frozen baseline last: an epoch's problem is reported first).
SCORED_SYSTEMS = [f"epoch_{e}" for e in SCORED_EPOCHS] + [cfg.FROZEN]
SYSTEMS = cfg.systems(config)
# Every (system, scorer) pair gets scores, metrics and a table: "<system>" for the primary scorer,
# "<system>@<scorer>" for the others (plots show the primary scorer's).
TABLED = cfg.score_sets(config)
# The weights' content identifies the backbone (moving the file reruns nothing; new weights retrain).
config["backbone"]["checkpoint"] = resolve_checkpoint(config["backbone"]["checkpoint"], workflow.basedir)
try:
    BACKBONE = backbone_identity(config["backbone"])
except AsdError as err:
    sys.exit(f"ERROR: {err}")
# train.device: cpu runs the GPU rules on the CPU on purpose, and then they request no GPU. Their
# threads: on a GPU, CPU workers that feed it; on the CPU, one core each for the embedding jobs (they
# are short and start-up bound, so two at once beat one on two cores) and a fair share per fold.
GPUS = 0 if config["train"]["device"] == "cpu" else 1
TRAIN_THREADS = 4 if GPUS else max(1, (workflow.cores or 1) // len(FOLDS))
EMBED_THREADS = 2 if GPUS else 1
# Light jobs run on the submit host under a cluster profile: seconds each, no GPU, and numpy (matplotlib
# for plots, torch only to count the submission's MACs); a queue wait would cost more than the work.
localrules:
    all,
    demo_data,
    download,
    score,
    evaluate,
    plots_scores,
    plots_models,
    submission,


# One GPU job at a time on a workstation, as its single GPU allows (`--resources gpu=N` for more). A
# cluster run (`--jobs N`, set by the SLURM profile) is not limited here: its scheduler shares the GPUs.
if workflow.global_resources["_nodes"].value is None and "gpu" not in dict(workflow.global_resources.items()):
    workflow.register_resource("gpu", 1)
    if GPUS:
        print("GPU jobs run one at a time (--resources gpu=1); give --resources gpu=N for N GPUs.", file=sys.stderr)


wildcard_constraints:
    dataset="|".join(DATASETS),
    fold="|".join(FOLDS),
    machine="[A-Za-z0-9]+",
    epoch=r"\d+",
    system="|".join(TABLED),


def machine_audio(wildcards):
    """The clips and attribute CSVs of one machine type: a changed or added WAV reruns its feature job."""
    spec = config["datasets"][wildcards.dataset]
    if spec["demo"]:
        return ["results/demo_data/dcase"]
    folder = Path(spec["root"]) / wildcards.machine
    if not folder.is_dir() and spec["download"]:
        checkpoints.download.get(dataset=wildcards.dataset)  # fetch first, then list what arrived
    return machine_files(folder)


def fold_features(wildcards):
    dataset = cfg.fold_dataset(config, wildcards.fold)
    return [f"results/features/{dataset}/{m}.h5" for m in cfg.fold_machine_types(config, wildcards.fold)]


def machine_features(wildcards):
    return f"results/features/{cfg.fold_dataset(config, wildcards.fold)}/{wildcards.machine}.h5"


def fold_checkpoints(wildcards):
    return [f"results/models/{wildcards.fold}/epoch_{e}.pt" for e in TRAINED_EPOCHS]


def fold_scores(wildcards, names=None):
    """[score sets x machines], set-major (every tabled pair by default): the order asd.evaluation.tables.evaluate_fold
    and the plots expect."""
    return [f"results/scores/{wildcards.fold}/{m}/{s}.csv"
            for s in (names or TABLED) for m in cfg.fold_machine_types(config, wildcards.fold)]


def fold_ground_truth(wildcards):
    """The file the fold's eval labels come from (none for labelled test names); the demo's lies in its folder."""
    dataset = cfg.fold_dataset(config, wildcards.fold)
    spec = config["datasets"][dataset]
    if not cfg.fold_has_labels(config, wildcards.fold):  # asked for explicitly: stop with the message alone
        sys.exit(f"ERROR: fold '{wildcards.fold}' cannot be evaluated: the test clips of dataset '{dataset}' "
                 f"have no labels; set datasets.{dataset}.ground_truth (e.g. eval_data_list_2025.csv).")
    if spec["ground_truth"] is None:
        return []
    return ["results/demo_data/dcase"] if spec["demo"] else [spec["ground_truth"]]


def evaluated_folds():
    return [f for f in FOLDS if cfg.fold_has_labels(config, f)]


def submission_scores(wildcards):
    fold = config["submission"]["fold"]
    return [
        f"results/scores/{fold}/{m}/{submitted(system)}.csv"
        for system in config["submission"]["systems"]
        for m in cfg.fold_machine_types(config, fold)
    ]


def submission_dev_tables(wildcards):
    fold = config["submission"]["dev_fold"]
    if fold is None or not cfg.fold_has_labels(config, fold):
        return []
    return [f"results/tables/{fold}/{submitted(system)}.csv" for system in config["submission"]["systems"]]


def submitted(system):
    """The score set a submission.systems entry submits."""
    return cfg.score_set(config, system["system"], system.get("scorer", cfg.primary_scorer(config)))


def all_targets():
    targets = []
    for fold in evaluated_folds():
        targets += expand("results/tables/{fold}/{system}.md", fold=fold, system=TABLED)
        targets.append(f"results/tables/{fold}/summary.md")
    if config["submission"]["fold"] in FOLDS:
        targets.append(f"results/submission/{config['submission']['archive']}.zip")
    return targets + PLOT_TARGETS  # defined in plots.smk
