# Data: the embedded demo dataset, official downloads, and the fbank cache (one file per machine type).


rule demo_data:
    output:
        directory("results/demo_data/dcase"),
    params:
        demo=config["demo_data"],
    log:
        "results/logs/demo_data.log",
    benchmark:
        "results/benchmarks/demo_data.tsv"
    threads: 2
    conda:
        "../../envs/asd.yaml"
    script:
        "../scripts/demo_data.py"


# A checkpoint: the feature jobs list a machine type's clips once they are on disk. Local (see
# common.smk): it needs the internet, which a cluster's submit host has and its compute nodes may not.
checkpoint download:
    output:
        "results/download/{dataset}.json",
    params:
        root=lambda w: config["datasets"][w.dataset]["root"],
        kind=lambda w: config["datasets"][w.dataset]["download"],
        machine_types=lambda w: config["datasets"][w.dataset]["machine_types"],
    log:
        "results/logs/download/{dataset}.log",
    conda:
        "../../envs/asd.yaml"
    script:
        "../scripts/download.py"


# Indexes the machine type's clips (names, domains, attributes; no eval ground truth, which enters
# at evaluation) and caches their fbank.
rule features:
    input:
        machine_audio,
    output:
        "results/features/{dataset}/{machine}.h5",
    params:
        root=lambda w: config["datasets"][w.dataset]["root"],
        audio=config["audio"],
        dtype=config["features"]["dtype"],
        code=STAGE_VERSIONS["features"],
    log:
        "results/logs/features/{dataset}/{machine}.log",
    benchmark:
        "results/benchmarks/features/{dataset}/{machine}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        "../../envs/asd.yaml"
    script:
        "../scripts/features.py"
