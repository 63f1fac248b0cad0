# Figures for `snakemake --report report.html`: ROC curves and score histograms of every system
# (per evaluated fold: they need labels), training curves and 2-D embedding projections (per fold,
# every machine type at the last epoch of each ensemble). Light jobs: matplotlib, never a GPU.

# Folds the workflow builds anyway: the evaluated ones (all figures) and the submission fold.
SUBMISSION_FOLDS = [config["submission"]["fold"]] if config["submission"]["fold"] in FOLDS else []
PLOTTED_FOLDS = evaluated_folds() + [f for f in SUBMISSION_FOLDS if f not in evaluated_folds()]
# The frozen backbone and the last epoch of each ensemble (else the last scored epoch): few projections,
# all of scored systems, showing what fine-tuning did to the embedding space.
EMBEDDING_PLOT_SYSTEMS = [cfg.FROZEN] + [
    f"epoch_{e}" for e in sorted({max(epochs) for epochs in config["ensembles"].values()} or {SCORED_EPOCHS[-1]})
]
# How captions name the configured backbone; the figure titles name the one the run recorded.
if config["backbone"]["checkpoint"] is None:
    BACKBONE_CAPTION = "random-init backbone (no pre-trained weights)"
else:
    BACKBONE_CAPTION = (
        f"backbone checkpoint {Path(config['backbone']['checkpoint']).name} (sha256 {BACKBONE['weights'][:12]})")
    if label := recorded_backbone_label(config["backbone"]["checkpoint"], BACKBONE["weights"]):
        BACKBONE_CAPTION = f"{label}: {BACKBONE_CAPTION}"
# kind -> one report-marked PNG per system, {fold} left open for rule plots_scores.
SCORE_FIGURES = {
    kind: [report(f"results/plots/{{fold}}/{kind}_{system}.png", caption=f"../report/{kind}.rst",
                  category=category, subcategory="{fold}", labels={"system": system})
           for system in SYSTEMS]
    for kind, category in {"roc": "ROC curves", "histograms": "Score histograms"}.items()
}
# What rule all asks for (common.smk's all_targets() appends it).
PLOT_TARGETS = (
    expand("results/plots/{fold}/{kind}_{system}.png", fold=evaluated_folds(), kind=list(SCORE_FIGURES),
           system=SYSTEMS)
    + expand("results/plots/{fold}/training.png", fold=PLOTTED_FOLDS)
    + expand("results/plots/{fold}/embeddings", fold=PLOTTED_FOLDS)
)


rule plots_scores:
    input:
        scores=lambda w: fold_scores(w, SYSTEMS),
        ground_truth=fold_ground_truth,
        train_log="results/models/{fold}/train_log.csv",
    output:
        roc=SCORE_FIGURES["roc"],
        histograms=SCORE_FIGURES["histograms"],
    params:
        machines=lambda w: cfg.fold_machine_types(config, w.fold),
        systems=SYSTEMS,
        ground_truth=lambda w: config["datasets"][cfg.fold_dataset(config, w.fold)]["ground_truth"],
        backbone=BACKBONE_CAPTION,
        code=STAGE_VERSIONS["plots"],
    log:
        "results/logs/plots_scores/{fold}.log",
    benchmark:
        "results/benchmarks/plots_scores/{fold}.tsv"
    conda:
        "../../envs/asd.yaml"
    script:
        "../scripts/plots_scores.py"


rule plots_models:
    input:
        train_log="results/models/{fold}/train_log.csv",
        embeddings=lambda w: [f"results/embeddings/{w.fold}/{m}/{s}.h5"
                              for m in cfg.fold_machine_types(config, w.fold) for s in EMBEDDING_PLOT_SYSTEMS],
        banks=lambda w: [f"results/banks/{w.fold}/{m}/{s}.json"
                         for m in cfg.fold_machine_types(config, w.fold) for s in EMBEDDING_PLOT_SYSTEMS],
    output:
        training=report("results/plots/{fold}/training.png", caption="../report/training.rst",
                        category="Training curves", labels={"fold": "{fold}"}),
        embeddings=report(directory("results/plots/{fold}/embeddings"), patterns=["{machine}_{system}.png"],
                          caption="../report/embeddings.rst", category="Embeddings (PCA)", subcategory="{fold}",
                          labels={"machine": "{machine}", "system": "{system}"}),
    params:
        backbone=BACKBONE_CAPTION,
        code=STAGE_VERSIONS["plots"],
    log:
        "results/logs/plots_models/{fold}.log",
    benchmark:
        "results/benchmarks/plots_models/{fold}.tsv"
    conda:
        "../../envs/asd.yaml"
    script:
        "../scripts/plots_models.py"
