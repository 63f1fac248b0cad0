"""One function per Snakemake rule: unpack the job's input/output/params and call the library.

``workflow/scripts/<rule>.py`` is two lines: ``run(snakemake, <function>)``. Keeping the glue
here makes every rule callable (and tested) without Snakemake: pass any object with ``input``,
``output``, ``params``, ``wildcards`` and ``log``.
"""

from __future__ import annotations

from typing import Callable

from asd.logs import run_logged


def run(job, function: Callable) -> None:
    """Run one rule's function with stderr and logging sent to the rule's log file."""
    run_logged(job.log[0] if len(job.log) else None, lambda: function(job))


def demo_data(job) -> None:
    from asd.demo import generate_demo

    generate_demo(job.output[0], seed=job.params.demo["seed"], scale=job.params.demo["scale"])


def download(job) -> None:
    from asd.download import download_dataset, official_urls
    from asd.io import write_json

    if job.params.kind is None:
        raise ValueError(f"dataset '{job.wildcards.dataset}' has no 'download' kind in the config")
    urls = official_urls(job.params.kind, job.params.machine_types)
    download_dataset(urls=urls, dest_root=job.params.root)
    write_json(job.output[0], {"root": job.params.root, "urls": urls})


def index(job) -> None:
    from asd.dataset import build_manifest, write_manifest

    # supplemental_kinds from the config are applied by the bank step, not here: editing them must not
    # re-index, re-cache and retrain everything.
    spec, audio = job.params.dataset, job.params.audio
    manifest = build_manifest(spec["root"], dataset=job.wildcards.dataset, machine_types=spec["machine_types"],
                              ground_truth=spec.get("ground_truth"), sample_rate=audio["sample_rate"],
                              channel_policy=audio["channel_policy"])
    write_manifest(manifest, job.output[0])


def features(job) -> None:
    from asd.dataset import read_manifest
    from asd.features import cache_features

    audio = job.params.audio
    cache_features(manifest=read_manifest(job.input[0]), machine=job.wildcards.machine, out_path=job.output[0],
                   sample_rate=audio["sample_rate"], channel_policy=audio["channel_policy"],
                   clip_seconds=audio["clip_seconds"], dtype=job.params.features["dtype"],
                   manifest_path=job.input[0])


def train(job) -> None:
    from asd.train import train_fold

    train_fold(fold=job.wildcards.fold, feature_paths=list(job.input), checkpoint_paths=list(job.output.checkpoints),
               log_path=job.output.log_csv, settings=dict(job.params.settings))


def embed(job) -> None:
    from asd.embed import extract_embeddings

    extract_embeddings(checkpoint_path=job.input.checkpoint, features_path=job.input.features,
                       out_path=job.output[0], backbone_settings=job.params.backbone,
                       batch_size=job.params.embed["batch_size"], device=job.params.device,
                       precision=job.params.precision)


def bank(job) -> None:
    from asd.scoring import write_bank

    write_bank(embeddings_path=job.input.embeddings, out_path=job.output[0], machine=job.wildcards.machine,
               kind_override=job.params.kind_override, use_supplemental=job.params.use_supplemental)


def knn(job) -> None:
    from asd.scoring import score_epoch

    score_epoch(embeddings_path=job.input.embeddings, bank_path=job.input.bank, out_path=job.output[0],
                machine=job.wildcards.machine, scoring=job.params.scoring, decision=job.params.decision)


def ensemble(job) -> None:
    from asd.ensemble import fuse_epochs

    fuse_epochs(score_paths=list(job.input), epochs=list(job.params.epochs), out_path=job.output[0],
                machine=job.wildcards.machine, decision=job.params.decision)


def metrics(job) -> None:
    from asd.tables import write_machine_metrics

    write_machine_metrics(scores_path=job.input[0], out_path=job.output[0], machine=job.wildcards.machine,
                          system=job.wildcards.system)


def table(job) -> None:
    from asd.tables import write_table

    write_table(metric_paths=list(job.input.metrics), train_log_path=job.input.train_log, csv_path=job.output.csv,
                md_path=job.output.md, fold=job.wildcards.fold, system=job.wildcards.system)


def summary(job) -> None:
    from asd.tables import write_summary

    write_summary(table_paths=list(job.input.tables), systems=list(job.params.systems),
                  train_log_path=job.input.train_log, csv_path=job.output.csv, md_path=job.output.md,
                  fold=job.wildcards.fold)


def submission(job) -> None:
    from asd.package import build_submission

    build_submission(zip_path=job.output[0], score_paths=list(job.input.scores), dev_tables=list(job.input.dev_tables),
                     checkpoint_path=job.input.checkpoint, machine_types=list(job.params.machine_types),
                     submission=dict(job.params.submission), backbone_settings=dict(job.params.backbone))


def plots_scores(job) -> None:
    from asd.report import plot_fold_scores

    plot_fold_scores(score_paths=list(job.input.scores), machines=list(job.params.machines),
                     systems=list(job.params.systems), train_log_path=job.input.train_log,
                     roc_paths=list(job.output.roc), histogram_paths=list(job.output.histograms),
                     fold=job.wildcards.fold)


def plots_training(job) -> None:
    from asd.report import plot_training

    plot_training(train_log_path=job.input[0], out_path=job.output[0], fold=job.wildcards.fold)


def plots_embeddings(job) -> None:
    from asd.report import plot_embeddings

    plot_embeddings(embeddings_path=job.input.embeddings, bank_path=job.input.bank, out_path=job.output[0],
                    fold=job.wildcards.fold, machine=job.wildcards.machine)
