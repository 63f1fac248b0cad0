# Helpers shared by the other modules (config queries, wildcard constraints, input functions).
import asd.config as cfg



FOLDS = list(config["folds"])
DATASETS = list(config["datasets"])
ENSEMBLES = list(config["ensembles"])
SCORED_EPOCHS = cfg.scored_epochs(config)


wildcard_constraints:
    dataset="|".join(DATASETS),
    fold="|".join(FOLDS),
    machine="[A-Za-z0-9]+",
    epoch=r"\d+",
    ensemble="|".join(ENSEMBLES),
    system=r"epoch_\d+|" + "|".join(ENSEMBLES),


def fold_features_ancient(wildcards):
    dataset = cfg.fold_dataset(config, wildcards.fold)
    return [ancient(f"results/features/{dataset}/{m}.h5") for m in cfg.fold_machine_types(config, wildcards.fold)]


def machine_features(wildcards):
    return f"results/features/{cfg.fold_dataset(config, wildcards.fold)}/{wildcards.machine}.h5"


def index_inputs(wildcards):
    """The demo dataset is written by a rule; real data is read from disk as is."""
    return ["results/demo_data/dcase"] if config["datasets"][wildcards.dataset]["demo"] else []


def system_scores(wildcards):
    return f"results/scores/{wildcards.fold}/{wildcards.machine}/{wildcards.system}.csv"


def ensemble_scores(wildcards):
    epochs = config["ensembles"][wildcards.ensemble]
    return [f"results/scores/{wildcards.fold}/{wildcards.machine}/epoch_{e}.csv" for e in epochs]


def fold_system_metrics(wildcards):
    if not cfg.fold_has_labels(config, wildcards.fold):
        dataset = cfg.fold_dataset(config, wildcards.fold)
        raise ValueError(f"fold '{wildcards.fold}' cannot be evaluated: the test clips of dataset '{dataset}' "
                         f"have no labels; set datasets.{dataset}.ground_truth (e.g. eval_data_list_2025.csv).")
    machines = cfg.fold_machine_types(config, wildcards.fold)
    return [f"results/metrics/{wildcards.fold}/{m}/{wildcards.system}.json" for m in machines]


def evaluated_folds():
    return [f for f in FOLDS if cfg.fold_has_labels(config, f)]


def submission_scores(wildcards):
    fold = config["submission"]["fold"]
    return [
        f"results/scores/{fold}/{m}/{system['ensemble']}.csv"
        for system in config["submission"]["systems"]
        for m in cfg.fold_machine_types(config, fold)
    ]


def submission_dev_metrics(wildcards):
    fold = config["submission"]["dev_fold"]
    if fold is None or not cfg.fold_has_labels(config, fold):
        return []
    return [f"results/tables/{fold}/{system['ensemble']}.csv" for system in config["submission"]["systems"]]


def all_targets():
    targets = []
    for fold in evaluated_folds():
        targets += expand("results/tables/{fold}/{system}.md", fold=fold, system=cfg.systems(config))
        targets.append(f"results/tables/{fold}/summary.md")
    if config["submission"]["fold"] in FOLDS:
        targets.append(f"results/submission/{config['submission']['archive']}.zip")
    return targets + PLOT_TARGETS  # defined in plots.smk
