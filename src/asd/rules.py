"""One function per Snakemake rule: unpack the job's input/output/params and call the library.

``workflow/scripts/<rule>.py`` is two lines: ``run(snakemake, <function>)``. Keeping the glue
here makes every rule callable (and tested) without Snakemake: pass any object with ``input``,
``output``, ``params``, ``wildcards`` and ``log``.
"""

from __future__ import annotations

import os
from typing import Callable

from asd.logs import run_logged


def run(job, function: Callable) -> None:
    """Run one rule's function with stderr and logging sent to the rule's log file, on the job's threads."""
    threads = str(getattr(job, "threads", "") or "")
    if threads:  # before torch or numpy start their thread pools: a 1-thread job must not take every core
        for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ[variable] = threads
    run_logged(job.log[0] if len(job.log) else None, lambda: function(job))


def demo_data(job) -> None:
    from asd.data.demo import generate_demo

    generate_demo(job.output[0], seed=job.params.demo["seed"], scale=job.params.demo["scale"], workers=job.threads)


def download(job) -> None:
    from asd.data.download import download_dataset, official_urls
    from asd.io import write_json

    if job.params.kind is None:
        raise ValueError(f"dataset '{job.wildcards.dataset}' has no 'download' kind in the config")
    urls = official_urls(job.params.kind, job.params.machine_types)
    download_dataset(urls=urls, dest_root=job.params.root)
    write_json(job.output[0], {"root": job.params.root, "urls": urls})


def features(job) -> None:
    from asd.data.dataset import build_manifest

    audio, machine = job.params.audio, job.wildcards.machine
    # The machine type's own index: eval ground truth is not read here (labels enter at 'evaluate').
    # It runs before torch is imported, so a bad clip is reported at once.
    manifest = build_manifest(job.params.root, dataset=job.wildcards.dataset, machine_types=[machine],
                              sample_rate=audio["sample_rate"], channel_policy=audio["channel_policy"])
    from asd.data.features import cache_features
    cache_features(manifest=manifest, machine=machine, out_path=job.output[0], sample_rate=audio["sample_rate"],
                   channel_policy=audio["channel_policy"], clip_seconds=audio["clip_seconds"],
                   dtype=job.params.dtype, manifest_path=job.params.root)


def train(job) -> None:
    from asd.model.train import train_fold

    # train.device is read from the config, not params: where a model trains does not change which model it is.
    settings = {"backbone": dict(job.config["backbone"]), "model": dict(job.params.model),
                "train": {**job.params.train, "device": job.config["train"]["device"]}}
    train_fold(fold=job.wildcards.fold, feature_paths=list(job.input), checkpoint_paths=list(job.output.checkpoints),
               log_path=job.output.log_csv, settings=settings)


def embed(job) -> None:
    from asd.model.embed import extract_epoch_embeddings

    extract_epoch_embeddings(checkpoint_paths=list(job.input.checkpoints), features_path=job.input.features,
                             out_paths=list(job.output.epochs), frozen_path=job.output.frozen,
                             backbone_settings=dict(job.config["backbone"]),
                             batch_size=job.config["embed"]["batch_size"], device=job.config["train"]["device"],
                             precision=job.params.precision)


def score(job) -> None:
    from asd.scoring.score import score_machine

    score_machine(systems=list(job.params.systems), embedding_paths=list(job.input), bank_paths=list(job.output.banks),
                  score_paths=list(job.output.scores), scorers=dict(job.params.scorers),
                  ensembles=dict(job.params.ensembles),
                  ensemble_paths=list(job.output.ensembles), machine=job.wildcards.machine,
                  kind_override=job.params.kind_override, use_supplemental=job.params.use_supplemental,
                  scoring=dict(job.params.scoring), decision=dict(job.params.decision))


def evaluate(job) -> None:
    from asd.evaluation.tables import evaluate_fold

    evaluate_fold(score_paths=list(job.input.scores), machines=list(job.params.machines),
                  systems=list(job.params.systems), ground_truth=job.params.ground_truth,
                  train_log_path=job.input.train_log, metric_paths=list(job.output.metrics),
                  table_paths=list(job.output.tables), markdown_paths=list(job.output.markdown),
                  summary_csv=job.output.summary_csv, summary_md=job.output.summary_md, fold=job.wildcards.fold,
                  scorers=list(job.params.scorers))


def submission(job) -> None:
    from asd.submission.assemble import build_submission

    build_submission(zip_path=job.output[0], score_paths=list(job.input.scores), dev_tables=list(job.input.dev_tables),
                     checkpoint_path=job.input.checkpoint, machine_types=list(job.params.machine_types),
                     submission=dict(job.params.submission), backbone_settings=dict(job.config["backbone"]),
                     ensembles=dict(job.params.ensembles), scorers=dict(job.params.scorers),
                     scoring=dict(job.params.scoring),
                     decision=dict(job.params.decision))


def plots_scores(job) -> None:
    from asd.evaluation.report import plot_fold_scores

    plot_fold_scores(score_paths=list(job.input.scores), machines=list(job.params.machines),
                     systems=list(job.params.systems), ground_truth=job.params.ground_truth,
                     train_log_path=job.input.train_log,
                     roc_paths=list(job.output.roc), histogram_paths=list(job.output.histograms),
                     fold=job.wildcards.fold)


def plots_models(job) -> None:
    from asd.evaluation.report import plot_embeddings, plot_training

    plot_training(train_log_path=job.input.train_log, out_path=job.output.training, fold=job.wildcards.fold)
    for embeddings, bank in zip(job.input.embeddings, job.input.banks):
        # results/embeddings/<fold>/<machine>/<system>.h5 -> <out dir>/<machine>_<system>.png
        machine, system = embeddings.split("/")[-2], embeddings.split("/")[-1].removesuffix(".h5")
        plot_embeddings(embeddings_path=embeddings, bank_path=bank,
                        out_path=f"{job.output.embeddings}/{machine}_{system}.png", fold=job.wildcards.fold,
                        machine=machine)
