# Training: one model per fold (all its machine types together), one small checkpoint per epoch.
# Retrains when a feature file or a setting that shapes the model changes; train.device is where it
# runs, not what it computes, and is read from the config without triggering reruns.


rule train:
    input:
        fold_features,
    output:
        checkpoints=expand("results/models/{{fold}}/epoch_{epoch}.pt", epoch=TRAINED_EPOCHS),
        log_csv="results/models/{fold}/train_log.csv",
    params:
        backbone=BACKBONE,
        model=config["model"],
        train={k: v for k, v in config["train"].items() if k != "device"},
        code=STAGE_VERSIONS["train"],
    log:
        "results/logs/train/{fold}.log",
    benchmark:
        "results/benchmarks/train/{fold}.tsv"
    threads: TRAIN_THREADS
    resources:
        gpu=GPUS,
        mem_mb=32000,
        runtime=720,
    conda:
        "../../envs/asd.yaml"
    script:
        "../scripts/train.py"
