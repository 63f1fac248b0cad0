# Evaluation and delivery: official metrics and Table-1 tables per fold (the only step that reads
# eval ground truth, so new labels rerun nothing upstream), and the submission archive.


rule evaluate:
    input:
        scores=fold_scores,
        ground_truth=fold_ground_truth,
        train_log="results/models/{fold}/train_log.csv",
    output:
        metrics=expand("results/metrics/{{fold}}/{system}.json", system=TABLED),
        tables=expand("results/tables/{{fold}}/{system}.csv", system=TABLED),
        markdown=[report(f"results/tables/{{fold}}/{system}.md", caption="../report/table.rst", category="Tables",
                         subcategory="{fold}", labels={"system": system}) for system in TABLED],
        summary_csv="results/tables/{fold}/summary.csv",
        summary_md=report("results/tables/{fold}/summary.md", category="Tables", subcategory="{fold}",
                          labels={"system": "summary"}),
    params:
        machines=lambda w: cfg.fold_machine_types(config, w.fold),
        systems=TABLED,
        scorers=list(config["scorers"]),
        ground_truth=lambda w: config["datasets"][cfg.fold_dataset(config, w.fold)]["ground_truth"],
        code=STAGE_VERSIONS["evaluate"],
    log:
        "results/logs/evaluate/{fold}.log",
    benchmark:
        "results/benchmarks/evaluate/{fold}.tsv"
    conda:
        "../../envs/asd.yaml"
    script:
        "../scripts/evaluate.py"


rule submission:
    input:
        scores=submission_scores,
        dev_tables=submission_dev_tables,
        checkpoint=f"results/models/{config['submission']['fold']}/epoch_1.pt",
    output:
        "results/submission/{archive}.zip",
    params:
        submission=config["submission"],
        backbone=BACKBONE,
        machine_types=cfg.fold_machine_types(config, config["submission"]["fold"]),
        ensembles=config["ensembles"],
        scorers=config["scorers"],
        scoring=config["scoring"],
        decision=config["decision"],
        code=STAGE_VERSIONS["submission"],
    log:
        "results/logs/submission/{archive}.log",
    benchmark:
        "results/benchmarks/submission/{archive}.tsv"
    conda:
        "../../envs/asd.yaml"
    script:
        "../scripts/submission.py"
