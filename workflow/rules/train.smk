# Training: one model per fold (all its machine types together), one small checkpoint per epoch.
# The feature files are ancient(): regenerating one machine type's features (snakemake -R
# results/features/<dataset>/<machine>.h5) reuses the fold's checkpoints instead of retraining;
# a change of the feature settings still retrains, through params.


rule train:
    input:
        fold_features_ancient,
    output:
        checkpoints=expand("results/models/{{fold}}/epoch_{epoch}.pt", epoch=range(1, config["train"]["epochs"] + 1)),
        log_csv="results/models/{fold}/train_log.csv",
    params:
        machine_types=lambda w: cfg.fold_machine_types(config, w.fold),
        settings=cfg.section(config, ["backbone", "model", "train"]),
        feature_settings=cfg.section(config, ["audio", "features"]),
    log:
        "results/logs/train/{fold}.log",
    benchmark:
        "results/benchmarks/train/{fold}.tsv"
    threads: 4
    resources:
        gpu=1,
        mem_mb=32000,
        runtime=720,
    conda:
        "../../envs/asd.yaml"
    script:
        "../scripts/train.py"
