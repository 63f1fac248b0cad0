# Data: the embedded demo dataset, official downloads, the clip index and the fbank cache.


rule demo_data:
    output:
        directory("results/demo_data/dcase"),
    params:
        demo=config["demo_data"],
    log:
        "results/logs/demo_data.log",
    conda:
        "../../envs/asd.yaml"
    script:
        "../scripts/demo_data.py"


rule download:
    output:
        "results/download/{dataset}.json",
    params:
        root=lambda w: config["datasets"][w.dataset]["root"],
        kind=lambda w: config["datasets"][w.dataset]["download"],
        machine_types=lambda w: config["datasets"][w.dataset]["machine_types"],
    log:
        "results/logs/download/{dataset}.log",
    resources:
        runtime=240,
    conda:
        "../../envs/asd.yaml"
    script:
        "../scripts/download.py"


rule index:
    input:
        index_inputs,
    output:
        "results/manifest/{dataset}.csv",
    params:
        dataset=lambda w: {k: config["datasets"][w.dataset][k] for k in ("root", "machine_types", "ground_truth")},
        audio=config["audio"],
    log:
        "results/logs/index/{dataset}.log",
    conda:
        "../../envs/asd.yaml"
    script:
        "../scripts/index.py"


rule features:
    input:
        "results/manifest/{dataset}.csv",
    output:
        "results/features/{dataset}/{machine}.h5",
    params:
        audio=config["audio"],
        features=config["features"],
    log:
        "results/logs/features/{dataset}/{machine}.log",
    benchmark:
        "results/benchmarks/features/{dataset}/{machine}.tsv"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        "../../envs/asd.yaml"
    script:
        "../scripts/features.py"
