# Evaluation and delivery: per-machine official metrics, Table-1-shaped tables, the submission archive.


rule metrics:
    input:
        system_scores,
    output:
        "results/metrics/{fold}/{machine}/{system}.json",
    log:
        "results/logs/metrics/{fold}/{machine}/{system}.log",
    conda:
        "../../envs/asd.yaml"
    script:
        "../scripts/metrics.py"


rule table:
    input:
        metrics=fold_system_metrics,
        train_log="results/models/{fold}/train_log.csv",
    output:
        csv="results/tables/{fold}/{system}.csv",
        md=report("results/tables/{fold}/{system}.md", caption="../report/table.rst", category="Tables",
                  subcategory="{fold}", labels={"system": "{system}"}),
    log:
        "results/logs/table/{fold}/{system}.log",
    conda:
        "../../envs/asd.yaml"
    script:
        "../scripts/table.py"


rule summary:
    input:
        tables=lambda w: expand("results/tables/{fold}/{system}.csv", fold=w.fold, system=cfg.systems(config)),
        train_log="results/models/{fold}/train_log.csv",
    output:
        csv="results/tables/{fold}/summary.csv",
        md=report("results/tables/{fold}/summary.md", category="Tables", subcategory="{fold}",
                  labels={"fold": "{fold}", "table": "summary"}),
    params:
        systems=cfg.systems(config),
    log:
        "results/logs/summary/{fold}.log",
    conda:
        "../../envs/asd.yaml"
    script:
        "../scripts/summary.py"


rule submission:
    input:
        scores=submission_scores,
        dev_tables=submission_dev_metrics,
        checkpoint=f"results/models/{config['submission']['fold']}/epoch_1.pt",
    output:
        "results/submission/{archive}.zip",
    params:
        submission=config["submission"],
        backbone=config["backbone"],
        machine_types=cfg.fold_machine_types(config, config["submission"]["fold"]),
    log:
        "results/logs/submission/{archive}.log",
    conda:
        "../../envs/asd.yaml"
    script:
        "../scripts/submission.py"
