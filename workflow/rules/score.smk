# Scoring: embeddings of the frozen backbone and of every epoch (one GPU job per fold x machine type:
# the backbone and the features are loaded once), then one light job per fold x machine type for its
# memory banks, the scores of every scorer for the frozen system and every scored epoch (embeddings
# read once), and the multi-epoch ensembles of each scorer. Every per-system file stays a target.


rule embed:
    input:
        checkpoints=fold_checkpoints,
        features=machine_features,
    output:
        frozen="results/embeddings/{fold}/{machine}/frozen.h5",
        epochs=expand("results/embeddings/{{fold}}/{{machine}}/epoch_{epoch}.h5", epoch=TRAINED_EPOCHS),
    params:
        backbone=BACKBONE,
        precision=config["train"]["precision"],
        code=STAGE_VERSIONS["embed"],
    log:
        "results/logs/embed/{fold}/{machine}.log",
    benchmark:
        "results/benchmarks/embed/{fold}/{machine}.tsv"
    threads: EMBED_THREADS
    resources:
        gpu=GPUS,
        mem_mb=16000,
        runtime=60,
    conda:
        "../../envs/asd.yaml"
    script:
        "../scripts/embed.py"


rule score:
    input:
        expand("results/embeddings/{{fold}}/{{machine}}/{system}.h5", system=SCORED_SYSTEMS),
    output:
        banks=expand("results/banks/{{fold}}/{{machine}}/{system}.json", system=SCORED_SYSTEMS),
        scores=expand("results/scores/{{fold}}/{{machine}}/{name}.csv", name=cfg.score_sets(config, SCORED_SYSTEMS)),
        ensembles=expand("results/scores/{{fold}}/{{machine}}/{name}.csv", name=cfg.score_sets(config, ENSEMBLES)),
    params:
        systems=SCORED_SYSTEMS,
        scorers=config["scorers"],
        ensembles=config["ensembles"],
        use_supplemental=config["scoring"]["use_supplemental"],
        kind_override=lambda w: config["supplemental_kinds"].get(w.machine),
        scoring={k: v for k, v in config["scoring"].items() if k not in ("epochs", "use_supplemental")},
        decision=config["decision"],
        code=STAGE_VERSIONS["score"],
    log:
        "results/logs/score/{fold}/{machine}.log",
    benchmark:
        "results/benchmarks/score/{fold}/{machine}.tsv"
    resources:
        mem_mb=1000,
        runtime=30,
    conda:
        "../../envs/asd.yaml"
    script:
        "../scripts/score.py"
