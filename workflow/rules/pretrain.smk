# Pre-training of the demo backbone (asd.model.pretrain): the BEATs architecture at the small DEMO size,
# all weights, on a synthetic machine-sound corpus (asd.model.corpus) disjoint from the demo's machine
# types and clips. Not part of the default target: the demo uses the shipped models/demo_backbone.pt,
# which `make pretrain` rebuilds bit for bit (same code, torch build and kind of CPU). This rule
# writes a copy under results/ to compare with it:
#   snakemake --cores 2 pretrain_demo_backbone
# Runs in the Snakemake process (run:), so it needs no interpreter on the PATH and no script file.


rule pretrain_demo_backbone:
    output:
        checkpoint="results/pretrain/demo_backbone.pt",
        sha256="results/pretrain/demo_backbone.pt.sha256",
        report="results/pretrain/demo_backbone.pt.json",
    params:
        seed=0,
    log:
        "results/logs/pretrain/demo_backbone.log",
    benchmark:
        "results/benchmarks/pretrain/demo_backbone.tsv"
    threads: 2  # corpus processes; training always runs on 1 torch thread (the shipped bytes are those of such a run)
    resources:
        mem_mb=4000,
        runtime=30,
    run:
        from asd.logs import run_logged
        from asd.model.pretrain import PretrainSettings, run as pretrain_run

        settings = PretrainSettings(seed=params.seed, threads=1)
        run_logged(log[0], lambda: pretrain_run(output.checkpoint, settings, workers=threads))
