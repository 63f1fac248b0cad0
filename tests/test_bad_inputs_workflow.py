"""docs/bad-inputs.md through `snakemake`, as a user types it: every catalogue row that the workflow can reach.

Each case asserts that the user sees the row's message (``ERROR: <message>`` in Snakemake's output, and
``ERROR asd: <message>`` at the end of the job's log under results/logs/), that no Python traceback is
printed, and that the failing job left no output behind. Batched to stay fast on 2 cores:

- config rows: one ``snakemake -n`` per case (no job runs), run two at a time;
- data rows: ONE ``snakemake --keep-going`` over a dataset whose every machine type is broken differently,
  asking for the feature files only;
- pipeline rows: one small run of the workflow (the tiny test overlay, up to the scores), then a few runs on
  copies of it, each damaging files or overlaying the config and forcing the jobs under test (``--force``
  on their outputs, ``--rerun-triggers mtime`` so that an overlay's changed params rerun nothing else).

The three batches start together (fixture ``started``): most jobs are one short Python process, so they
share the 2 cores far better than one batch after the other (about 1.5 minutes on 2 idle cores).
Rows the workflow cannot reach (``asd index`` only, guards behind an earlier check) keep their tests in
tests/test_bad_inputs.py; the catalogue's Test column says which (tests/test_bad_inputs.py checks that it does).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from workflow_runner import DEMO_BACKBONE_SHA, OVERLAYS, snakemake_command

pytestmark = pytest.mark.slow
TRACEBACK = "Traceback (most recent call last)"
SOURCE = "config (config.yaml + --configfile overlays)"
SCHEMA = "(see the keys and their descriptions in workflow/schemas/config.schema.yaml)."
HAS_CUDA = torch.cuda.is_available()


def snakemake(workdir: Path, *options: str, targets: list[str] = (), overlays: tuple[Path, ...] = ()
              ) -> subprocess.CompletedProcess:
    """One `snakemake` command line on the test overlays plus ``overlays``."""
    workdir.mkdir(parents=True, exist_ok=True)
    # A later --configfile replaces the earlier list, so the test overlays are named again.
    command = snakemake_command(workdir, "--configfile", *OVERLAYS, *map(str, overlays), *options, "--", *targets)
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


def in_parallel(runs: dict[str, tuple]) -> dict[str, subprocess.CompletedProcess]:
    """name -> snakemake(*arguments) for several independent command lines, two at a time (2 cores)."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(lambda a: snakemake(*a[0], **a[1]), arguments) for name, arguments in runs.items()}
        return {name: future.result() for name, future in futures.items()}


def shown(proc: subprocess.CompletedProcess) -> str:
    """Everything the user sees in the terminal; never a Python traceback."""
    output = proc.stdout + proc.stderr
    assert TRACEBACK not in output, output
    return output


def assert_job_failed_with(proc: subprocess.CompletedProcess, workdir: Path, log: str, message: str | re.Pattern,
                           *, outputs: tuple[str, ...] = ()) -> None:
    """The failing job printed ``ERROR: <message>`` and logged it last in ``log``; its outputs are gone."""
    output = shown(proc)
    assert proc.returncode == 1, output
    pattern = message if isinstance(message, re.Pattern) else re.compile(re.escape(message))
    # A message is one line, except where it quotes a library's multi-line text (a state_dict mismatch).
    printed = re.compile(r"^ERROR: (?:" + pattern.pattern + r")$", pattern.flags | re.MULTILINE)
    assert printed.search(output), (pattern.pattern, [line for line in output.splitlines() if "ERROR" in line])
    logged = re.compile(r" ERROR asd: (?:" + pattern.pattern + r")\Z", pattern.flags)
    log_text = (workdir / log).read_text().rstrip()
    assert logged.search(log_text), log_text[-2000:]
    for path in outputs:
        assert not (workdir / path).exists(), path


def write_overlay(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def started(tmp_path_factory):
    """Every snakemake run of this module, started together: most jobs are one Python process importing torch,
    so the three phases (config, data, pipeline) share the 2 cores far better than one after the other."""
    tmp = tmp_path_factory.mktemp("bad-inputs")
    with ThreadPoolExecutor(max_workers=3) as pool:
        yield {phase: pool.submit(run, tmp / phase) for phase, run in
               (("pipeline", pipeline_phase), ("data", data_phase), ("config", config_phase))}


@pytest.fixture(scope="module")
def config_runs(started):
    return started["config"].result()


@pytest.fixture(scope="module")
def feature_run(started):
    return started["data"].result()


@pytest.fixture(scope="module")
def pipeline_runs(started):
    return started["pipeline"].result()


# ---------------------------------------------------------------------------------------------- config rows
# Checked while the Snakefile is read (asd.config.validate_config, or common.smk for the backbone file):
# `snakemake -n` stops before building the DAG, no job starts, results/ is never created.

CONFIG_CASES = {
    "negative-epochs": ("train: {epochs: -1}",
                        f"{SOURCE}: config key 'train.epochs': -1 is less than the minimum of 1. Fix the value {SCHEMA}"),
    "wrong-type": ("train: {epochs: ten}",
                   f"{SOURCE}: config key 'train.epochs': 'ten' is not of type 'integer'. Fix the value {SCHEMA}"),
    "bad-enum": ("audio: {channel_policy: left}",
                 f"{SOURCE}: config key 'audio.channel_policy': 'left' is not one of ['refuse', 'mean', 'first']. "
                 f"Fix the value {SCHEMA}"),
    "unknown-key": ("train: {epoch: 3}",
                    f"{SOURCE}: config key 'train': Additional properties are not allowed ('epoch' was unexpected). "
                    f"Remove or rename the key {SCHEMA}"),
    "scorer-unknown-parameter": ("scorers: {rescale: {method: knn_rescale, kref: 4}}",
                                 f"{SOURCE}: config key 'scorers.rescale': Additional properties are not allowed "
                                 f"('kref' was unexpected). Remove or rename the key {SCHEMA}"),
    "fold-machine-type-not-in-dataset": (
        "folds: {dev: {dataset: dev, machine_types: [pump]}}",
        f"{SOURCE}: config key 'folds.dev.machine_types' names ['pump'], which are not machine types of dataset "
        "'dev' (['fan', 'valve']); add them to datasets.dev.machine_types or remove them from the fold."),
    "fold-unknown-dataset": ("folds: {dev: {dataset: evl}}",
                             f"{SOURCE}: config key 'folds.dev.dataset' names 'evl', which is not a dataset; use one "
                             "of ['dev', 'eval']."),
    "ensemble-epoch-beyond-training": ("ensembles: {ensemble: [1, 3]}",
                                       f"{SOURCE}: config key 'ensembles.ensemble' lists epochs [3] but train.epochs "
                                       "is 2; use epochs between 1 and 2."),
    "scored-epoch-beyond-training": ("scoring: {epochs: [3]}",
                                     f"{SOURCE}: config key 'scoring.epochs' lists epoch 3 beyond train.epochs (2); "
                                     "use epochs between 1 and 2, or all."),
    "fold-named-after-another-dataset": ("folds: {eval: {dataset: dev}}",
                                         f"{SOURCE}: config key 'folds' names ['eval'], which are datasets other than "
                                         "the folds' own; a fold may share its name only with its own dataset, so "
                                         "rename the fold."),
    "supplemental-kind-unknown-machine": ("supplemental_kinds: {pump: noise}",
                                          f"{SOURCE}: config key 'supplemental_kinds' names unknown machine types "
                                          "['pump']; use machine types listed under datasets.<name>.machine_types, "
                                          "or remove them."),
    "lora-blocks-beyond-num-layers": ("model: {lora_blocks: [0, 4]}",
                                      f"{SOURCE}: config key 'model.lora_blocks' lists blocks [4], but "
                                      "backbone.num_layers is 4 (blocks 0 to 3); use blocks below 4 or raise "
                                      "backbone.num_layers."),
    "fp16-on-cpu": ("train: {precision: fp16}",
                    f"{SOURCE}: config key 'train.precision' is fp16, which is for CUDA GPUs, but train.device is "
                    "cpu; use auto, bf16 or fp32."),
    "submission-fold-unknown": ("submission: {fold: evl}",
                                f"{SOURCE}: config key 'submission.fold' is 'evl', not a fold; use one of "
                                "['dev', 'eval']."),
    "submission-system-unknown": (
        "submission: {systems: [{label: Lab_System_task2_1, system: fused}]}",
        f"{SOURCE}: submission system 'Lab_System_task2_1' names system 'fused', which this config does not score; "
        "use one of ['frozen', 'epoch_1', 'epoch_2', 'ensemble']."),
    "backbone-checkpoint-missing": ("backbone: {checkpoint: {tmp}/BEATs_iter3.pt}",
                                    "config key 'backbone.checkpoint': {tmp}/BEATs_iter3.pt does not exist; download "
                                    "BEATs_iter3.pt (linked from microsoft/unilm beats/README.md) to that path, or set "
                                    "it to null for a random-init backbone."),
}
# Asked for eval-set tables without ground truth: refused while the DAG is built (common.smk fold_ground_truth).
NO_GROUND_TRUTH = ("fold 'eval' cannot be evaluated: the test clips of dataset 'eval' have no labels; set "
                   "datasets.eval.ground_truth (e.g. eval_data_list_2025.csv).")


def config_phase(tmp: Path) -> dict[str, tuple[Path, subprocess.CompletedProcess]]:
    """case -> (folder, `snakemake -n` with the case's overlay)."""
    runs = {}
    for name, (text, _) in CONFIG_CASES.items():
        overlay = write_overlay(tmp / "overlays", name, text.replace("{tmp}", str(tmp)))
        runs[name] = ((tmp / name, "-n"), {"overlays": (overlay,)})
    overlay = write_overlay(tmp / "overlays", "no-ground-truth", "datasets: {eval: {ground_truth: null}}")
    runs["no-ground-truth"] = ((tmp / "no-ground-truth", "-n"),
                               {"targets": ["results/tables/eval/summary.md"], "overlays": (overlay,)})
    procs = in_parallel(runs)
    return {name: (tmp, proc) for name, proc in procs.items()}


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_bad_config_stops_snakemake_before_any_job(config_runs, case):
    tmp, proc = config_runs[case]
    output = shown(proc)
    assert proc.returncode == 1, output
    message = CONFIG_CASES[case][1].replace("{tmp}", str(tmp))
    assert message in output.splitlines() or f"ERROR: {message}" in output.splitlines(), output
    assert "Building DAG of jobs" not in output and not (tmp / case / "results").exists()


def test_eval_tables_without_ground_truth_are_refused_while_building_the_dag(config_runs):
    tmp, proc = config_runs["no-ground-truth"]
    output = shown(proc)
    assert proc.returncode == 1, output
    assert NO_GROUND_TRUTH in output and "Job stats" not in output and not (tmp / "no-ground-truth/results").exists()


def test_config_errors_print_the_message_alone(config_runs):
    for case, (tmp, proc) in config_runs.items():
        frames = [line for line in shown(proc).splitlines()
                  if line.startswith(("  File \"", "AsdError", "InputFunctionException"))]
        assert frames == [], (case, frames)


# ------------------------------------------------------------------------------------------------ data rows
# One machine type per fault under one dataset root (plus a dataset whose root does not exist); the
# 'features' job of each scans its folder and stops at the fault. case -> (dataset, machine type).

BROKEN = {
    "root-missing": ("gone", "fan"), "machine-type-missing": ("dev", "missing"), "no-test-folder": ("dev", "notest"),
    "empty-test-folder": ("dev", "emptytest"), "extra-file": ("dev", "extra"), "dcase2020-names": ("dev", "names"),
    "test-clip-in-train": ("dev", "split"), "sample-rate": ("dev", "rate"), "eight-channels": ("dev", "channels"),
    "empty-wav": ("dev", "empty"), "random-bytes": ("dev", "corrupt"), "zero-bytes": ("dev", "zerobytes"),
    "flac": ("dev", "flac"), "foreign-attributes": ("dev", "attributes"),
}
TRAIN = "section_00_source_train_normal_0000_a_1.wav"
TEST = "section_00_source_test_normal_0000_a_1.wav"
CLIP = "section_00_0001.wav"


def write_clip(path: Path, *, rate: int = 16000, channels: int = 1, samples: int | None = None, **options) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    samples = rate // 10 if samples is None else samples
    sf.write(path, np.full((samples, channels), 0.1, np.float32), rate, subtype="PCM_16", **options)


def broken_dataset(tmp: Path) -> dict[str, str]:
    """Writes the broken dataset root ``tmp/raw``; case -> the message its feature job prints."""
    root, gone = (tmp / "raw").resolve(), (tmp / "gone").resolve()

    def machine(name: str, *, test: bool = True) -> Path:
        write_clip(root / name / "train" / TRAIN)
        if test:
            write_clip(root / name / "test" / TEST)
        return root / name

    write_clip(machine("rate") / "test" / CLIP, rate=44100)
    write_clip(machine("channels") / "test" / CLIP, channels=8)
    write_clip(machine("empty") / "test" / CLIP, samples=0)
    (machine("corrupt") / "test" / CLIP).write_bytes(np.random.default_rng(0).bytes(2048))
    (machine("zerobytes") / "test" / CLIP).write_bytes(b"")
    write_clip(machine("flac") / "test" / CLIP, format="FLAC")
    write_clip(machine("names") / "test" / "normal_id_00_00000000.wav")
    write_clip(machine("split") / "train" / "section_00_source_test_normal_0001_a_1.wav")
    (machine("attributes") / "attributes_00.csv").write_text("name,d1p\n")
    machine("notest", test=False)
    (machine("emptytest", test=False) / "test").mkdir()
    (machine("extra") / "test" / "notes.txt").write_text("my notes\n")
    unreadable = ("cannot read it as audio (Error opening '{clip}': Format not recognised.); replace it with an "
                  "intact 16-bit PCM WAV file (re-download or re-extract the dataset) or delete it.")
    found = sorted(p.name for p in root.iterdir())
    messages = {
        "root-missing": f"dataset root {gone} does not exist; set the dataset's `root` to the folder holding the "
                        "machine-type folders (e.g. data/dcase2025t2/dev_data/raw), or download / generate the data "
                        "first.",
        "machine-type-missing": f"dataset root {root} has no folder for machine type(s) ['missing'] (found: {found}); "
                                "fix `machine_types` or download / unzip those machine types into the root.",
        "no-test-folder": f"{root}/notest has no test/ folder; every machine-type folder needs train/ and test/ "
                          "(check that `root` points at the folder holding the machine types and that the zip was "
                          "fully extracted).",
        "empty-test-folder": f"{root}/emptytest/test holds no .wav clips; re-extract the machine type's zip (or "
                             "remove the machine type from `machine_types`).",
        "extra-file": f"{root}/extra/test/notes.txt: test/ may hold only .wav clips; move this file out of the "
                      "dataset folder.",
        "dcase2020-names": f"{root}/names/test/normal_id_00_00000000.wav: not a DCASE 2025 clip name; files in test/ "
                           "must be named section_SS_{{source|target}}_test_{{normal|anomaly}}_NNNN_<attributes>.wav "
                           "or section_SS_NNNN.wav. Rename the file (older layouts such as DCASE 2020 "
                           "`normal_id_00_00000000.wav` are not supported) or move it out of the dataset folder.",
        "test-clip-in-train": f"{root}/split/train/section_00_source_test_normal_0001_a_1.wav: the name says it is a "
                              "test clip but it lies in train/; move it to test/.",
        "sample-rate": "{clip}: sample rate is 44100 Hz, expected 16000 Hz; resample the clips to 16 kHz (e.g. `sox "
                       "in.wav -r 16000 out.wav`) or set `audio.sample_rate`.",
        "eight-channels": "{clip}: has 8 channels, expected mono; set `audio.channel_policy: mean` (average the "
                          "channels) or `first` (keep channel 0), or down-mix the files beforehand.",
        "empty-wav": "{clip}: holds no samples; replace it with the intact clip or delete it.",
        "random-bytes": "{clip}: " + unreadable,
        "zero-bytes": "{clip}: " + unreadable,
        "flac": "{clip}: is FLAC (Free Lossless Audio Codec), not WAV; convert it to 16-bit PCM WAV (e.g. `sox in "
                "out.wav` or `ffmpeg -i in out.wav`) or remove it.",
        "foreign-attributes": f"{root}/attributes/attributes_00.csv: expected a header starting with `file_name` "
                              "(file_name,d1p,d1v,...); restore the file from the dataset zip or delete it.",
    }
    return {case: text.format(clip=root / BROKEN[case][1] / "test" / CLIP) for case, text in messages.items()}


def data_phase(tmp: Path) -> tuple[Path, subprocess.CompletedProcess, dict[str, str]]:
    """(workdir, the one `snakemake --keep-going` asking for every broken machine type's features, case -> message)."""
    messages = broken_dataset(tmp)
    dev = [machine for dataset, machine in BROKEN.values() if dataset == "dev"]
    overlay = write_overlay(tmp, "broken", f"""
datasets:
  dev: {{root: {(tmp / 'raw').resolve()}, demo: false, machine_types: [{', '.join(dev)}]}}
  gone: {{root: {(tmp / 'gone').resolve()}, machine_types: [fan]}}
""")
    targets = [f"results/features/{dataset}/{machine}.h5" for dataset, machine in BROKEN.values()]
    # threads 1: two feature jobs at a time on 2 cores (each fails within its first second).
    proc = snakemake(tmp / "work", "--set-threads", "features=1", "--keep-going", targets=targets, overlays=(overlay,))
    return tmp / "work", proc, messages


@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_dataset_stops_the_feature_job_with_its_message(feature_run, case):
    workdir, proc, messages = feature_run
    where = "/".join(BROKEN[case])
    assert_job_failed_with(proc, workdir, f"results/logs/features/{where}.log", messages[case],
                           outputs=(f"results/features/{where}.h5", f"results/features/{where}.h5.partial"))


def test_each_broken_machine_type_fails_alone(feature_run):
    _, proc, messages = feature_run
    assert len([line for line in shown(proc).splitlines() if line.startswith("ERROR: ")]) == len(messages)


# -------------------------------------------------------------------------------------------- pipeline rows
# The tiny workflow (ci overlay: dev = fan + valve, eval = Polisher, 2 epochs) run once: the dev embeddings
# and the eval scores. A fold's embed jobs read its checkpoints in order, so each checkpoint fault needs a
# (fold, run) of its own; a forced training job blocks its fold's other jobs.

SCORED = ["results/embeddings/dev/fan/epoch_2.h5", "results/embeddings/dev/valve/epoch_2.h5",
          "results/scores/eval/Polisher/ensemble.csv"]




def damage_keeping_mtime(path: Path, damage) -> None:
    """Damage a file in place but keep its modification time: only the forced jobs rerun."""
    stat = path.stat()
    damage(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def random_bytes(path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).bytes(4096))


def foreign_checkpoint(path: Path) -> None:
    torch.save({"model": torch.load(path, weights_only=True)["state"]}, path)


def wrong_shape_checkpoint(path: Path) -> None:
    checkpoint = torch.load(path, weights_only=True)
    name, weight = next((k, v) for k, v in checkpoint["state"].items() if k.startswith("projection.") and v.ndim == 2)
    checkpoint["state"][name] = torch.zeros(weight.shape[0] + 1, weight.shape[1])
    torch.save(checkpoint, path)


def ground_truth_without(source: Path, dest: Path, machine: str, clip: str) -> Path:
    """A copy of an eval_data_list csv that lacks one of the machine type's clips."""
    lines, current = [], None
    for line in source.read_text().splitlines():
        current = line if "," not in line else current
        if not (current == machine and line.startswith(f"{clip},")):
            lines.append(line)
    dest.write_text("\n".join(lines) + "\n")
    return dest


def embeddings(fold: str, machine: str) -> list[str]:
    return [f"results/embeddings/{fold}/{machine}/epoch_{e}.h5" for e in (1, 2)]


def pipeline_phase(tmp: Path) -> dict[str, tuple[Path, subprocess.CompletedProcess]]:
    """The workflow run once, then five runs, each on its own copy of it: name -> (workdir, snakemake)."""
    scored = tmp / "scored"
    proc = snakemake(scored, targets=SCORED)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    plan = {}

    def copy(name: str, damages: dict[str, object], overlay: str, targets: list[str]) -> None:
        workdir = tmp / name
        shutil.copytree(scored, workdir, symlinks=True)
        for path, damage in damages.items():
            damage_keeping_mtime(workdir / path, damage)
        overlays = (write_overlay(tmp / "overlays", name, overlay),) if overlay else ()
        plan[name] = ((workdir, "--keep-going", "--rerun-triggers", "mtime", "--force"),
                      {"targets": targets, "overlays": overlays})

    truth = ground_truth_without(scored / "results/demo_data/dcase/eval_data_list_demo.csv",
                                 tmp / "eval_data_list.csv", "Polisher", "section_00_0000.wav")
    # features of dev/fan and checkpoint 2 of dev damaged; eval ground truth lacking a clip
    copy("damaged", {"results/features/dev/fan.h5": truncate, "results/models/dev/epoch_2.pt": random_bytes},
         f"datasets: {{eval: {{ground_truth: {truth}}}}}",
         ["results/embeddings/dev/fan/epoch_1.h5", "results/embeddings/dev/valve/epoch_1.h5",
          "results/tables/eval/summary.md"])
    # k beyond the memory bank; an embedding file truncated; training on CUDA where there is none
    copy("k-cuda", {"results/embeddings/dev/valve/epoch_1.h5": truncate},
         "scoring: {k: 50}\ntrain: {device: cuda}",
         ["results/scores/dev/fan/epoch_1.csv", "results/scores/dev/valve/epoch_1.csv"]
         + ([] if HAS_CUDA else ["results/models/eval/epoch_1.pt"]))
    # a foreign file as checkpoint 1 of dev; an unreadable BEATs checkpoint for training
    beats = tmp / "BEATs_iter3.pt"
    random_bytes(beats)
    copy("foreign-beats", {"results/models/dev/epoch_1.pt": foreign_checkpoint},
         f"backbone: {{checkpoint: {beats}}}", ["results/embeddings/dev/fan/epoch_1.h5", "results/models/eval/epoch_1.pt"])
    # the backbone changed since training; a diverging learning rate
    copy("backbone-nan", {}, "backbone: {num_layers: 3}\nmodel: {lora_blocks: [0, 1, 2]}\ntrain: {learning_rate: 1.0e+30}",
         ["results/embeddings/dev/fan/epoch_1.h5", "results/models/eval/epoch_1.pt"])
    # checkpoint 1 of eval of the wrong shape
    copy("wrong-shape", {"results/models/eval/epoch_1.pt": wrong_shape_checkpoint}, "",
         ["results/embeddings/eval/Polisher/epoch_1.h5"])
    return {name: (plan[name][0][0], proc) for name, proc in in_parallel(plan).items()}


RERUN_TRAIN = "; delete it and rerun the 'train' rule for its fold (snakemake --forcerun {path})."


def checkpoint_rule(path: str) -> str:
    return re.escape(RERUN_TRAIN.format(path=path))


@pytest.mark.parametrize("run, log, message, outputs", [
    ("damaged", "embed/dev/fan",
     re.compile(re.escape("feature file results/features/dev/fan.h5 is corrupt or truncated (Unable to synchronously "
                          "open file (truncated file: ") + r"eof = \d+, sblock->base_addr = 0, stored_eof = \d+\)\)"
                + re.escape("; rebuild it with the 'features' rule (snakemake --forcerun results/features/dev/fan.h5).")),
     embeddings("dev", "fan")),
    ("damaged", "embed/dev/valve",
     re.compile(re.escape("checkpoint results/models/dev/epoch_2.pt cannot be read (") + r"\w+Error: .+\)"
                + checkpoint_rule("results/models/dev/epoch_2.pt")),
     embeddings("dev", "valve")),
    ("foreign-beats", "embed/dev/fan",
     re.compile(re.escape("results/models/dev/epoch_1.pt is not an asd epoch checkpoint (format "
                          "asd-epoch-checkpoint-v1)") + checkpoint_rule("results/models/dev/epoch_1.pt")),
     embeddings("dev", "fan")),
    ("wrong-shape", "embed/eval/Polisher",
     re.compile(re.escape("checkpoint results/models/eval/epoch_1.pt does not fit the model (") + r".*size mismatch "
                r"for projection\.\d+\.weight: .*\)" + checkpoint_rule("results/models/eval/epoch_1.pt"), re.DOTALL),
     embeddings("eval", "Polisher")),
    ("backbone-nan", "embed/dev/fan",
     re.compile(re.escape("checkpoint results/models/dev/epoch_1.pt was trained on backbone demo backbone pre-trained "
                          f"on synthetic machine sounds — not BEATs (demo_backbone.pt, sha256 {DEMO_BACKBONE_SHA})")
                + r".* with 4 blocks, but the config now gives .* with 3; restore the config or"
                + checkpoint_rule("results/models/dev/epoch_1.pt")[1:]),
     embeddings("dev", "fan")),
    ("k-cuda", "score/dev/valve",
     re.compile(re.escape("embedding file results/embeddings/dev/valve/epoch_1.h5 is corrupt or truncated (Unable to "
                          "synchronously open file (truncated file: ") + r".+\)\)" + re.escape(
         "; rebuild it with the 'embed' rule (snakemake --forcerun results/embeddings/dev/valve/epoch_1.h5).")),
     ["results/scores/dev/valve/epoch_1.csv", "results/banks/dev/valve/epoch_1.json"]),
    ("k-cuda", "score/dev/fan",
     re.compile(re.escape("fan in results/banks/dev/fan/epoch_1.json") + r" \((source|target) bank\): "
                + re.escape("scoring.k = 50 but only ") + r"(\d+)" + re.escape(" bank clips are available; set "
                                                                             "scoring.k between 1 and ") + r"\2\."),
     ["results/scores/dev/fan/epoch_1.csv", "results/banks/dev/fan/epoch_1.json"]),
    ("damaged", "evaluate/eval",
     "{truth}: has no entry for Polisher/test/section_00_0000.wav; use the ground truth of this dataset "
     "(eval_data_list_2025.csv for the 2025 evaluation set) or set `ground_truth: null`.",
     ["results/tables/eval/summary.md", "results/metrics/eval/epoch_1.json"]),
    ("backbone-nan", "train/eval",
     re.compile(re.escape("training fold 'eval' stopped: the loss became ") + r"(nan|inf) at epoch \d+, step \d+\. "
                + re.escape("Lower train.learning_rate or set train.precision: fp32, then rerun (a changed setting "
                            "trains from scratch).")),
     ["results/models/eval/epoch_2.pt"]),
    ("foreign-beats", "train/eval",
     re.compile(re.escape("{beats} is not a readable torch checkpoint (") + r".+"),
     ["results/models/eval/epoch_1.pt", "results/models/eval/epoch_2.pt"]),
    pytest.param("k-cuda", "train/eval",
                 re.compile(re.escape("train.device is 'cuda' but no usable CUDA GPU is visible (this torch ")
                            + r".+" + re.escape("; torch.cuda.is_available() is False); run the job on a node with "
                                                "a GPU (the rule requests gpu=1: check the GPU partition in your "
                                                "profile), install a torch build that matches the node's CUDA driver "
                                                "(README: 'A torch build for your CUDA driver'), or set train.device: "
                                                "cpu to run on the CPU on purpose.")),
                 ["results/models/eval/epoch_1.pt", "results/models/eval/epoch_2.pt"],
                 marks=pytest.mark.skipif(HAS_CUDA, reason="this machine has CUDA")),
], ids=["damaged-features", "unreadable-checkpoint", "foreign-checkpoint", "wrong-shape-checkpoint",
        "backbone-changed", "damaged-embeddings", "k-beyond-bank", "ground-truth-lacks-clip", "nan-loss",
        "unreadable-beats", "cuda-missing"])
def test_damaged_pipeline_file_stops_its_job_with_the_rule_to_rerun(pipeline_runs, run, log, message, outputs):
    workdir, proc = pipeline_runs[run]
    values = {"truth": workdir.parent / "eval_data_list.csv", "beats": workdir.parent / "BEATs_iter3.pt"}
    if isinstance(message, re.Pattern):
        message = re.compile(message.pattern.replace(re.escape("{beats}"), re.escape(str(values["beats"]))),
                             message.flags)
    else:
        message = message.format(**values)
    assert_job_failed_with(proc, workdir, f"results/logs/{log}.log", message, outputs=tuple(outputs))
