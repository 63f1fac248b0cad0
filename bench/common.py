"""Helpers shared by the benchmarks: timing on a shared, noisy machine, the matmul peak, machine facts.

Every headline figure is a ratio of two timings taken in the same run, interleaved round by round
(``interleaved``), so a load change hits both sides alike; the best round of each side is kept
(background load only ever adds time, and on a machine shared with other jobs the quiet moments
come and go within seconds, so several rounds are needed to catch one for every variant).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, NamedTuple

import torch

from asd.device import resolve_precision

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "results" / "bench"


def interleaved(variants: dict[str, Callable[[], object]], *, rounds: int, warmup: int = 1) -> dict[str, dict]:
    """Run every variant once per round, round robin; per variant: best, median and all wall times (s)."""
    for _ in range(warmup):
        for run in variants.values():
            run()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, run in variants.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: {"best_s": min(t), "median_s": statistics.median(t), "times_s": t} for name, t in times.items()}


# The best of these (and of any model-shaped matmul a benchmark adds) is "the peak". The best size
# depends on CPU and dtype (bf16 with AMX peaked at 1024 on the Xeon, at 3072 on the EPYC), and too
# few sizes let a model forward come out above 100 % of an underestimated "peak".
PEAK_SIZES = (512, 1024, 1536, 2048, 3072)
PEAK_SECONDS = 0.5  # each peak workload repeats its matmul for about this long: comparable with what it is compared to
PEAK_UNDERESTIMATED = "peak underestimated: faster than the best dense matmul measured, so no fraction of peak"


class PeakWorkload(NamedTuple):
    run: Callable[[], object]
    flops: float  # of one run
    dtype: str
    shape: str  # "1024" for a square matmul, "MxKxN" for [M x K] @ [K x N]


def peak_workloads(dtypes: tuple[torch.dtype, ...], *, shapes: tuple[tuple[int, int, int], ...] = (),
                   seconds: float = PEAK_SECONDS) -> dict[str, PeakWorkload]:
    """Dense matmuls to interleave with a benchmark's own variants: every ``PEAK_SIZES`` square and each
    (M, K, N) of ``shapes`` (e.g. the model's own [tokens x 768] @ [768 x 3072]), in every dtype.

    One run repeats its matmul for about ``seconds``, so a peak and the workload it is compared with
    last similarly long and see the same background load, not just its quiet moments.
    """
    generator = torch.Generator().manual_seed(0)
    all_shapes = {str(size): (size, size, size) for size in PEAK_SIZES} | {"x".join(map(str, mkn)): mkn for mkn in shapes}
    workloads = {}
    for dtype in dtypes:
        for label, (m, k, n) in all_shapes.items():
            a = torch.randn(m, k, generator=generator).to(dtype)
            b = torch.randn(k, n, generator=generator).to(dtype)
            single = interleaved({"mm": lambda: torch.mm(a, b)}, rounds=3)["mm"]["best_s"]
            repeats = max(1, round(seconds / single))
            workloads[f"peak {dtype_name(dtype)} {label}"] = PeakWorkload(
                lambda a=a, b=b, repeats=repeats: [torch.mm(a, b) for _ in range(repeats)], 2.0 * m * k * n * repeats,
                dtype_name(dtype), label)
    return workloads


def matmul_peaks(timings: dict[str, dict], workloads: dict[str, PeakWorkload]) -> dict[str, dict]:
    """Per dtype: GFLOP/s of every peak workload (timed in ``timings``) by shape, and the best, the peak."""
    peaks: dict[str, dict] = {}
    for name, workload in workloads.items():
        by_shape = peaks.setdefault(workload.dtype, {"by_shape": {}})["by_shape"]
        by_shape[workload.shape] = workload.flops / timings[name]["best_s"] / 1e9
    for peak in peaks.values():
        peak["shape"], peak["gflops"] = max(peak["by_shape"].items(), key=lambda item: item[1])
    return peaks


def fraction_of_peak(gflops: float, peak: dict) -> dict:
    """``gflops`` against a peak from ``matmul_peaks``. Above 1 the peak was underestimated (nothing beats
    the best dense matmul), which is recorded rather than reported as a fraction above 100 %."""
    fraction = gflops / peak["gflops"]
    return {"fraction_of_peak": fraction, "peak_underestimated": fraction > 1.0}


def percent_of_peak(row: dict) -> str:
    """A ``fraction_of_peak`` result for a Markdown cell."""
    return "peak underestimated" if row["peak_underestimated"] else f"{row['fraction_of_peak'] * 100:.1f} %"


def peak_target(what: str, row: dict, goal: float) -> dict:
    """Target row for a ``fraction_of_peak`` result, ``goal`` a fraction; no verdict if the peak was underestimated."""
    return target(what, row["fraction_of_peak"] * 100, goal * 100, unit="%",
                  no_verdict=PEAK_UNDERESTIMATED if row["peak_underestimated"] else "")


def peaks_text(peaks: dict[str, dict]) -> str:
    """The measured peaks for Markdown: per dtype the best and every shape's GFLOP/s."""
    return "; ".join(f"{dtype} {peak['gflops']:.0f} GFLOP/s (best at {peak['shape']}; by shape: "
                     + ", ".join(f"{shape} {gflops:.0f}" for shape, gflops in peak["by_shape"].items()) + ")"
                     for dtype, peak in peaks.items())


NO_NATIVE_BF16 = "skipped: this CPU has no native bf16 (no avx512_bf16/amx_bf16 in /proc/cpuinfo)"


def cpu_has_native_bf16() -> bool:
    """Whether bf16 runs natively here, as ``precision: auto`` decides it (asd.device). Emulated bf16 is
    slower than fp32 and nothing a user would run, so the benchmarks skip their bf16 variants without it."""
    return resolve_precision("auto", torch.device("cpu")) == "bf16"


def benchmark_dtypes() -> tuple[torch.dtype, ...]:
    """The dtypes worth measuring on this CPU: float32, and bfloat16 where it is native."""
    return (torch.float32, torch.bfloat16) if cpu_has_native_bf16() else (torch.float32,)


def dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.bfloat16: "bf16"}[dtype]


def run_snakemake(*args: str, cwd: Path | None = None) -> tuple[str, float, float]:
    """The repository's Snakefile with ``args``: (stdout + stderr, wall seconds, CPU seconds of every process
    it started). A failed run raises with the command and the tail of its output."""
    import resource
    import subprocess

    command = [str(Path(sys.executable).with_name("snakemake")), "--snakefile", str(REPO / "Snakefile"), *args]
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    completed = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if completed.returncode:
        raise RuntimeError(f"{' '.join(command)} failed (exit {completed.returncode}):\n"
                           f"{completed.stdout[-3000:]}\n{completed.stderr[-3000:]}")
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    return completed.stdout + completed.stderr, wall, cpu


def machine() -> dict:
    """What the numbers were measured on, including the load they were measured under."""
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []
    field = lambda key: next((line.split(":", 1)[1].split() for line in cpuinfo if line.startswith(key)), [])
    flags = field("flags")
    return {
        "cpu": " ".join(field("model name")) or platform.processor(),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "avx512_bf16": "avx512_bf16" in flags,
        "amx_bf16": "amx_bf16" in flags,
        "native_bf16": cpu_has_native_bf16(),
        "load_average_1_5_15": [round(load, 2) for load in os.getloadavg()],
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }


def target(what: str, measured: float | None, goal: float, *, unit: str, higher_is_better: bool = True,
           at_most: bool = False, no_verdict: str = "") -> dict:
    """One row of the targets table. ``at_most``: a limit that may be reached (shown as ≤, e.g. a job count).
    ``no_verdict``: why the row is not judged (``met`` None), e.g. a skipped variant (``measured`` None)."""
    sign = "≥" if higher_is_better else ("≤" if at_most else "<")
    row = {"what": what, "measured": "—" if measured is None else f"{measured:.3g} {unit}".strip(),
           "target": f"{sign} {goal:g} {unit}".strip()}
    if no_verdict:
        return row | {"met": None, "no_verdict": no_verdict}
    met = measured >= goal if higher_is_better else (measured <= goal if at_most else measured < goal)
    return row | {"met": met}


def standalone(*, name: str, doc: str, run: Callable[..., dict], markdown: Callable[[dict], str],
               options: dict[str, object]) -> None:
    """Command line of one benchmark script: each option becomes --<option> (typed by its default),
    plus --out (default results/bench/<name>.json); prints the Markdown and writes the JSON."""
    from asd.io import write_json

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    for option, default in options.items():
        flag = "--" + option.replace("_", "-")
        if isinstance(default, bool):
            parser.add_argument(flag, action="store_true")
        else:
            parser.add_argument(flag, type=type(default), default=default)
    parser.add_argument("--out", default=str(RESULTS / f"{name}.json"))
    args = vars(parser.parse_args())
    out = args.pop("out")
    result = run(**args)
    print(markdown(result))
    write_json(out, result)
    print(f"wrote {out}")
