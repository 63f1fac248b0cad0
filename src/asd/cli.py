"""``asd``: the pipeline's pieces as console commands (the workflow itself runs through Snakemake).

    asd index ROOT [--out FILE.csv]             what the pipeline will see in a dataset root
    asd demo OUT                                write the embedded demo dataset
    asd download {dev,eval} ROOT [--machine M]  fetch and unpack the official zips
    asd evaluate SCORES_DIR --ground-truth GT   official metrics of a folder of result files
    asd check-submission ZIP                    validate a submission archive
    asd pretrain --out models/demo_backbone.pt  pre-train the demo backbone on synthetic machine sounds
"""

from __future__ import annotations

import argparse
import sys

from asd.errors import AsdError


def _index(args) -> None:
    from asd.data.dataset import build_manifest, write_manifest

    manifest = build_manifest(args.root, dataset=args.dataset, machine_types=args.machine or None,
                              ground_truth=args.ground_truth, sample_rate=args.sample_rate,
                              channel_policy=args.channel_policy)
    if args.out:
        write_manifest(manifest, args.out)
    summary = manifest.groupby(["machine", "split", "domain", "label"]).size().rename("clips").reset_index()
    print(summary.to_string(index=False))
    print(f"\n{len(manifest)} clips in {args.root}" + (f"; manifest written to {args.out}" if args.out else ""))


def _demo(args) -> None:
    from asd.data.demo import generate_demo

    info = generate_demo(args.out, seed=args.seed)
    print(f"demo dataset: dev {info['dev_root']}, eval {info['eval_root']}, ground truth {info['ground_truth']}")


def _download(args) -> None:
    from asd.data.download import download_dataset, official_urls

    result = download_dataset(urls=official_urls(args.dataset, args.machine or None), dest_root=args.root)
    for url, status in result.items():
        print(f"{status:>10}  {url}")


def _evaluate(args) -> None:
    from asd.io import write_json
    from asd.evaluation.metrics import evaluate_dir, format_table

    result = evaluate_dir(args.scores_dir, args.ground_truth, machines=args.machine or None, ci95=args.ci95)
    print(format_table(result), end="")
    if args.json:
        write_json(args.json, result)
        print(f"JSON written to {args.json}")


def _check_submission(args) -> int:
    from asd.submission.archive import check_submission

    problems = check_submission(args.zip, machines=args.machine or None)
    if problems:
        print(f"{args.zip} is NOT a valid submission:", *(f"  - {p}" for p in problems), sep="\n")
        return 1
    print(f"{args.zip}: valid submission archive")
    return 0


def _pretrain(args) -> None:
    from asd.logs import run_logged

    def job() -> None:
        from asd.model.pretrain import run, settings_from, summary

        values = {"seed": args.seed, "threads": args.threads}
        if args.steps is not None:
            values["steps"] = args.steps
        print(summary(run(args.out, settings_from(values), workers=args.workers)))

    run_logged(args.log, job)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asd", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    index = commands.add_parser("index", help="build and print the clip manifest of a dataset root")
    index.add_argument("root", help="folder holding <machine>/{train,test,supplemental}/")
    index.add_argument("--out", help="also write the manifest CSV here")
    index.add_argument("--dataset", default="dataset", help="dataset name written in the manifest")
    index.add_argument("--machine", action="append", help="only this machine type (repeatable)")
    index.add_argument("--ground-truth", help="eval ground truth (eval_data_list csv or evaluator folder)")
    index.add_argument("--sample-rate", type=int, default=16000)
    index.add_argument("--channel-policy", choices=["refuse", "mean", "first"], default="refuse")
    index.set_defaults(run=_index)

    demo = commands.add_parser("demo", help="write the embedded demo dataset")
    demo.add_argument("out")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(run=_demo)

    download = commands.add_parser("download", help="download and unpack the official DCASE 2025 zips")
    download.add_argument("dataset", choices=["dev", "eval"])
    download.add_argument("root", help="e.g. data/dcase2025t2/dev_data/raw")
    download.add_argument("--machine", action="append", help="only this machine type (repeatable)")
    download.set_defaults(run=_download)

    evaluate = commands.add_parser("evaluate", help="official metrics of anomaly_score_*/decision_result_* files")
    evaluate.add_argument("scores_dir")
    evaluate.add_argument("--ground-truth", required=True,
                          help="evaluator folder (ground_truth_data/, ground_truth_domain/), eval_data_list csv, "
                               "or a dataset root with labelled test names")
    evaluate.add_argument("--json", help="write the full result as JSON here")
    evaluate.add_argument("--machine", action="append", help="only this machine type (repeatable)")
    evaluate.add_argument("--ci95", action="store_true", help="add the evaluator's jackknife interval (slow)")
    evaluate.set_defaults(run=_evaluate)

    check = commands.add_parser("check-submission", help="validate a submission zip")
    check.add_argument("zip")
    check.add_argument("--machine", action="append", help="machine type that must be present (repeatable)")
    check.set_defaults(run=_check_submission)

    pretrain = commands.add_parser(
        "pretrain", help="pre-train the demo backbone (BEATs architecture, DEMO size) on synthetic machine sounds")
    pretrain.add_argument("--out", default="models/demo_backbone.pt",
                          help="checkpoint to write (also OUT.sha256 and the report OUT.json)")
    pretrain.add_argument("--seed", type=int, default=0)
    pretrain.add_argument("--steps", type=int, help="optimiser steps (default: the shipped checkpoint's)")
    pretrain.add_argument("--threads", type=int, default=1,
                          help="torch intra-op threads; the checkpoint's bytes depend on it (shipped: 1)")
    pretrain.add_argument("--workers", type=int, default=2,
                          help="processes generating the corpus (does not change the checkpoint)")
    pretrain.add_argument("--log", help="send the progress log here instead of stderr")
    pretrain.set_defaults(run=_pretrain)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args) or 0
    except AsdError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
