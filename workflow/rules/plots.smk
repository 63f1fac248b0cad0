# Figures for `snakemake --report report.html`: ROC curves and score histograms (one job per fold,
# drawing every system), training curves (per fold) and 2-D embedding projections (per fold,
# machine type and the last epoch of each ensemble). Light jobs: matplotlib, never torch.

# Folds the workflow builds anyway: the evaluated ones (all figures) and the submission fold.
SUBMISSION_FOLDS = [config["submission"]["fold"]] if config["submission"]["fold"] in FOLDS else []
PLOTTED_FOLDS = evaluated_folds() + [f for f in SUBMISSION_FOLDS if f not in evaluated_folds()]
# The last epoch of each ensemble (else the last scored epoch): few projections, all of scored systems.
EMBEDDING_PLOT_EPOCHS = sorted({max(epochs) for epochs in config["ensembles"].values()} or {SCORED_EPOCHS[-1]})
# How captions name the configured backbone; the figure titles name the one the run recorded.
BACKBONE_CAPTION = (
    "random-init backbone (no pre-trained weights)"
    if config["backbone"]["checkpoint"] is None
    else f"BEATs checkpoint {config['backbone']['checkpoint']}"
)
# kind -> one report-marked PNG per system, {fold} left open for rule plots_scores.
SCORE_FIGURES = {
    kind: [report(f"results/plots/{{fold}}/{kind}_{system}.png", caption=f"../report/{kind}.rst",
                  category=category, subcategory="{fold}", labels={"system": system})
           for system in cfg.systems(config)]
    for kind, category in {"roc": "ROC curves", "histograms": "Score histograms"}.items()
}
# What rule all asks for (common.smk's all_targets() appends it).
PLOT_TARGETS = (
    expand("results/plots/{fold}/{kind}_{system}.png", fold=evaluated_folds(), kind=list(SCORE_FIGURES),
           system=cfg.systems(config))
    + expand("results/plots/{fold}/training.png", fold=PLOTTED_FOLDS)
    + [
        f"results/plots/{fold}/{machine}/embeddings_epoch_{epoch}.png"
        for fold in PLOTTED_FOLDS
        for machine in cfg.fold_machine_types(config, fold)
        for epoch in EMBEDDING_PLOT_EPOCHS
    ]
)


rule plots_scores:
    input:
        # [systems x machines], system-major: the order asd.report.plot_fold_scores expects
        scores=lambda w: [
            f"results/scores/{w.fold}/{m}/{s}.csv"
            for s in cfg.systems(config)
            for m in cfg.fold_machine_types(config, w.fold)
        ],
        train_log="results/models/{fold}/train_log.csv",
    output:
        roc=SCORE_FIGURES["roc"],
        histograms=SCORE_FIGURES["histograms"],
    params:
        machines=lambda w: cfg.fold_machine_types(config, w.fold),
        systems=cfg.systems(config),
        backbone=BACKBONE_CAPTION,
    log:
        "results/logs/plots_scores/{fold}.log",
    conda:
        "../../envs/asd.yaml"
    script:
        "../scripts/plots_scores.py"


rule plots_training:
    input:
        "results/models/{fold}/train_log.csv",
    output:
        report("results/plots/{fold}/training.png", caption="../report/training.rst", category="Training curves",
               labels={"fold": "{fold}"}),
    params:
        backbone=BACKBONE_CAPTION,
    log:
        "results/logs/plots_training/{fold}.log",
    conda:
        "../../envs/asd.yaml"
    script:
        "../scripts/plots_training.py"


rule plots_embeddings:
    input:
        embeddings="results/embeddings/{fold}/{machine}/epoch_{epoch}.h5",
        bank="results/banks/{fold}/{machine}/epoch_{epoch}.json",
    output:
        report("results/plots/{fold}/{machine}/embeddings_epoch_{epoch}.png", caption="../report/embeddings.rst",
               category="Embeddings (PCA)", subcategory="{fold}", labels={"machine": "{machine}", "epoch": "{epoch}"}),
    params:
        backbone=BACKBONE_CAPTION,
    log:
        "results/logs/plots_embeddings/{fold}/{machine}/epoch_{epoch}.log",
    conda:
        "../../envs/asd.yaml"
    script:
        "../scripts/plots_embeddings.py"
