# Training: one model per fold (all its machine types together), one small checkpoint per epoch.


rule train:
    input:
        fold_features,
    output:
        checkpoints=expand("results/models/{{fold}}/epoch_{epoch}.pt", epoch=range(1, config["train"]["epochs"] + 1)),
        log_csv="results/models/{fold}/train_log.csv",
    params:
        machine_types=lambda w: cfg.fold_machine_types(config, w.fold),
        settings=cfg.section(config, ["backbone", "model", "train"]),
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
