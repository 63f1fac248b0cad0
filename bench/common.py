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
from typing import Callable

import torch

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


PEAK_SIZES = (1024, 2048)  # the best of these is "the peak": bf16 (AMX) peaks at the smaller size here
PEAK_SECONDS = 0.5  # each peak workload repeats its matmul for about this long: comparable with what it is compared to


def peak_workloads(dtypes: tuple[torch.dtype, ...], *, seconds: float = PEAK_SECONDS) -> dict[str, tuple[Callable[[], object], float]]:
    """Dense square matmuls to interleave with a benchmark's own variants: name -> (run, FLOPs of one run).

    One run repeats an ``size``-square matmul for about ``seconds``, so a peak and the workload it is
    compared with last similarly long and see the same background load, not just its quiet moments.
    """
    generator = torch.Generator().manual_seed(0)
    workloads = {}
    for dtype in dtypes:
        for size in PEAK_SIZES:
            a = torch.randn(size, size, generator=generator).to(dtype)
            b = torch.randn(size, size, generator=generator).to(dtype)
            single = interleaved({"mm": lambda: torch.mm(a, b)}, rounds=3)["mm"]["best_s"]
            repeats = max(1, round(seconds / single))
            workloads[f"peak {dtype_name(dtype)} {size}"] = (
                lambda a=a, b=b, repeats=repeats: [torch.mm(a, b) for _ in range(repeats)], 2.0 * size**3 * repeats)
    return workloads


def peak_gflops(timings: dict[str, dict], workloads: dict[str, tuple], dtype: torch.dtype) -> float:
    """Best GFLOP/s over the peak workloads of ``dtype`` (from ``peak_workloads``, timed in ``timings``)."""
    prefix = f"peak {dtype_name(dtype)} "
    return max(flops / timings[name]["best_s"] / 1e9 for name, (_, flops) in workloads.items() if name.startswith(prefix))


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
        "load_average_1_5_15": [round(load, 2) for load in os.getloadavg()],
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }


def target(what: str, measured: float, goal: float, *, unit: str, higher_is_better: bool = True,
           at_most: bool = False) -> dict:
    """One row of the targets table. ``at_most``: a limit that may be reached (shown as ≤, e.g. a job count)."""
    met = measured >= goal if higher_is_better else (measured <= goal if at_most else measured < goal)
    sign = "≥" if higher_is_better else ("≤" if at_most else "<")
    return {"what": what, "measured": f"{measured:.3g} {unit}".strip(), "target": f"{sign} {goal:g} {unit}".strip(), "met": met}


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
