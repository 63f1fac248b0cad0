# Scoring: per-epoch embeddings, memory banks, KNN scores and multi-epoch ensembles.


rule embed:
    input:
        checkpoint="results/models/{fold}/epoch_{epoch}.pt",
        features=machine_features,
    output:
        "results/embeddings/{fold}/{machine}/epoch_{epoch}.h5",
    params:
        backbone=config["backbone"],
        embed=config["embed"],
        device=config["train"]["device"],
        precision=config["train"]["precision"],
    log:
        "results/logs/embed/{fold}/{machine}/epoch_{epoch}.log",
    benchmark:
        "results/benchmarks/embed/{fold}/{machine}/epoch_{epoch}.tsv"
    threads: 2
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=60,
    conda:
        "../../envs/asd.yaml"
    script:
        "../scripts/embed.py"


rule bank:
    input:
        embeddings="results/embeddings/{fold}/{machine}/epoch_{epoch}.h5",
    output:
        "results/banks/{fold}/{machine}/epoch_{epoch}.json",
    params:
        use_supplemental=config["scoring"]["use_supplemental"],
        kind_override=lambda w: config["supplemental_kinds"].get(w.machine),
    log:
        "results/logs/bank/{fold}/{machine}/epoch_{epoch}.log",
    conda:
        "../../envs/asd.yaml"
    script:
        "../scripts/bank.py"


rule knn:
    input:
        embeddings="results/embeddings/{fold}/{machine}/epoch_{epoch}.h5",
        bank="results/banks/{fold}/{machine}/epoch_{epoch}.json",
    output:
        "results/scores/{fold}/{machine}/epoch_{epoch}.csv",
    params:
        scoring=config["scoring"],
        decision=config["decision"],
    log:
        "results/logs/knn/{fold}/{machine}/epoch_{epoch}.log",
    benchmark:
        "results/benchmarks/knn/{fold}/{machine}/epoch_{epoch}.tsv"
    resources:
        mem_mb=4000,
    conda:
        "../../envs/asd.yaml"
    script:
        "../scripts/knn.py"


rule ensemble:
    input:
        ensemble_scores,
    output:
        "results/scores/{fold}/{machine}/{ensemble}.csv",
    params:
        epochs=lambda w: config["ensembles"][w.ensemble],
        decision=config["decision"],
    log:
        "results/logs/ensemble/{fold}/{machine}/{ensemble}.log",
    conda:
        "../../envs/asd.yaml"
    script:
        "../scripts/ensemble.py"
