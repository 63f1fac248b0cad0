"""Benchmark: wall time of the demo as `make demo` runs it, split by rule, job start-up shown apart.

Runs ``snakemake --cores 2 --configfile config/demo.yaml`` (what `make demo` runs once set up) with the
repository's Snakefile in a fresh temporary ``--directory`` (the repository's results/ and
.snakemake/ are never touched) and times it: the target is at most 120 s on 2 cores. The split by
rule comes from that run's ``benchmark:`` files, results/benchmarks/<rule>/**.tsv: per rule the jobs,
their summed wall and (sampled) CPU seconds, the slowest job.

Job start-up is measured apart, in fresh interpreters (best of --rounds, interleaved): every job of a
``script:`` rule is a new Python process that runs Snakemake's preamble (its imports are read from
snakemake.script.PythonScript.generate_preamble), then ``from asd.rules import <rule>, run`` and the
``from asd.X import`` lines of that rule's function in src/asd/rules.py (read from its source, so the
figure follows the rules as they change). Per rule: start-up = jobs × one job's start-up; work = wall
minus start-up. Two fixed jobs are timed the same way, for the start-up goal: a light job (bank,
KNN, ensemble, metrics, tables: ``asd.rules``, ``asd.scoring.score``, ``asd.evaluation.tables``; at most 1.5 s) and,
apart, a torch job (``asd.rules``, ``asd.model.train``). Snakemake's own time (parsing, DAG, scheduling;
no job running) is the demo's wall time not covered by any job's benchmark interval (a file's time
minus its duration to that time).

Jobs run up to --cores at a time, so the per-rule sums add up to more than the wall time.

    .venv/bin/python bench/bench_end_to_end.py [--cores 2] [--rounds 3] [--out results/bench/end_to_end.json]
    .venv/bin/python bench/bench_end_to_end.py --benchmarks results/benchmarks   # a finished run's files; runs nothing
"""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from common import REPO, interleaved, machine, run_snakemake, standalone, target

WALL_TARGET_S = 120.0
LIGHT_JOB, TORCH_JOB = ("asd.rules", "asd.scoring.score", "asd.evaluation.tables"), ("asd.rules", "asd.model.train")
LIGHT_STARTUP_TARGET_S = 1.5
DEMO_CONFIG = REPO / "config" / "demo.yaml"


# --- the demo run ----------------------------------------------------------------------------------

def run_demo(workdir: Path, *, cores: int) -> dict:
    """`make demo`'s command in ``workdir``: wall time, CPU time of every process it started, jobs per rule."""
    args = ["--directory", str(workdir), "--cores", str(cores), "--configfile", str(DEMO_CONFIG)]
    load_before = [round(x, 2) for x in os.getloadavg()]
    started = time.time()
    output, wall, cpu = run_snakemake(*args, cwd=workdir)
    stats = output.split("Job stats:", 1)[1].split("total", 1)[0] if "Job stats:" in output else ""
    return {
        "command": "snakemake --snakefile Snakefile " + " ".join(args),
        "wall_s": wall,
        "cpu_s": cpu,
        "started": started,
        "ended": started + wall,
        "planned_jobs": {rule: int(n) for rule, n in re.findall(r"^(\w+)\s+(\d+)$", stats, flags=re.MULTILINE)},
        "load_average_before": load_before,
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }


def read_benchmarks(benchmarks: Path) -> pd.DataFrame:
    """One row per benchmark file: rule, job, wall and CPU seconds, start and end (epoch seconds)."""
    rows = []
    for path in sorted(benchmarks.rglob("*.tsv")):
        table = pd.read_csv(path, sep="\t")
        relative = path.relative_to(benchmarks)
        wall = float(table["s"].iloc[-1])
        cpu = pd.to_numeric(table["cpu_time"], errors="coerce").iloc[-1]  # "NA" for a job shorter than a sample
        end = path.stat().st_mtime  # Snakemake writes the file when the job ends
        rows.append({"rule": relative.parts[0] if len(relative.parts) > 1 else relative.stem, "job": str(relative),
                     "wall_s": wall, "cpu_s": float(cpu) if pd.notna(cpu) else 0.0, "start": end - wall, "end": end})
    return pd.DataFrame(rows, columns=["rule", "job", "wall_s", "cpu_s", "start", "end"])


def covered_seconds(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of [start, end] intervals."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


# --- job start-up ----------------------------------------------------------------------------------

def preamble_imports() -> list[str]:
    """The import statements Snakemake's script directive puts before a Python script (read from its source)."""
    try:
        from snakemake.script import PythonScript

        source = inspect.getsource(PythonScript.generate_preamble)
    except (ImportError, AttributeError, OSError, TypeError):
        return ["import snakemake.script"]
    found = re.findall(r"^\s*((?:import [\w.]+)|(?:from [\w.]+ import [\w, ]+));\s*$", source, flags=re.MULTILINE)
    return found or ["import snakemake.script"]


def rule_modules(rule: str) -> list[str]:
    """asd modules a job of ``rule`` imports: asd.rules (the script's own import) and its function's ``from asd.X import``."""
    import asd.rules

    function = getattr(asd.rules, rule, None)
    if not callable(function):
        return ["asd.rules"]
    source = inspect.getsource(function)
    imported = re.findall(r"^\s*(?:from (asd(?:\.\w+)+) import|import (asd(?:\.\w+)+))", source, flags=re.MULTILINE)
    return ["asd.rules", *sorted({a or b for a, b in imported} - {"asd.rules"})]


def startup_code(statements: list[str]) -> str:
    """A fresh job's start: this checkout's src/ first on the path (as the scripts do), then the imports."""
    return "; ".join([f"import sys; sys.path.insert(0, {str(REPO / 'src')!r})", *statements])


def measure_startup(rules: list[str], *, rounds: int) -> dict:
    """Best-of-``rounds`` wall time of fresh interpreters: bare, + Snakemake's preamble, + each rule's imports,
    + the light and the torch job's imports."""
    preamble = preamble_imports()
    modules = {rule: rule_modules(rule) for rule in rules}
    fixed_jobs = {"light_job": list(LIGHT_JOB), "torch_job": list(TORCH_JOB)}
    variants = {"interpreter": [], "preamble": preamble}
    for mods in [*fixed_jobs.values(), *modules.values()]:
        variants.setdefault(" ".join(mods), preamble + [f"import {m}" for m in mods])

    def spawn(statements: list[str]):
        code = startup_code(statements) if statements else "pass"
        return lambda: subprocess.run([sys.executable, "-c", code], check=True, cwd=tempfile.gettempdir())

    timings = interleaved({name: spawn(statements) for name, statements in variants.items()}, rounds=rounds, warmup=0)
    best = {name: t["best_s"] for name, t in timings.items()}
    return {
        "rounds": rounds,
        "interpreter_s": best["interpreter"],
        "preamble_imports": preamble,
        "preamble_s": best["preamble"],
        "per_rule": {rule: {"modules": mods, "startup_s": best[" ".join(mods)]} for rule, mods in modules.items()},
        **{job: {"modules": mods, "startup_s": best[" ".join(mods)]} for job, mods in fixed_jobs.items()},
    }


# --- the benchmark ---------------------------------------------------------------------------------

def split_by_rule(jobs: pd.DataFrame, startup: dict) -> list[dict]:
    by_rule = jobs.groupby("rule").agg(jobs=("job", "size"), wall_s=("wall_s", "sum"), cpu_s=("cpu_s", "sum"),
                                       slowest_s=("wall_s", "max")).sort_values("wall_s", ascending=False)
    rows = []
    for rule, row in by_rule.iterrows():
        per_job = startup["per_rule"][rule]["startup_s"]
        rows.append({"rule": rule, "jobs": int(row["jobs"]), "wall_s": float(row["wall_s"]), "cpu_s": float(row["cpu_s"]),
                     "slowest_s": float(row["slowest_s"]), "startup_per_job_s": per_job,
                     "startup_s": per_job * int(row["jobs"]), "work_s": float(row["wall_s"]) - per_job * int(row["jobs"]),
                     "modules": startup["per_rule"][rule]["modules"]})
    return rows


def run(*, benchmarks: str = "", cores: int = 2, rounds: int = 3) -> dict:
    """Run the demo in a temporary directory (or read ``benchmarks``, a finished run's results/benchmarks) and split it."""
    demo = None
    with tempfile.TemporaryDirectory(prefix="asd-bench-demo-") as tmp:
        if benchmarks:
            folder = Path(benchmarks)
        else:
            demo = run_demo(Path(tmp), cores=cores)
            folder = Path(tmp) / "results" / "benchmarks"
        jobs = read_benchmarks(folder)
    startup = measure_startup(sorted(jobs["rule"].unique()), rounds=rounds)
    light = startup["light_job"]
    targets = [target(f"light job start-up: interpreter + preamble + {', '.join(light['modules'])}", light["startup_s"],
                      LIGHT_STARTUP_TARGET_S, unit="s", higher_is_better=False, at_most=True)]
    if jobs.empty:
        return {"machine": machine(), "found": False, "benchmarks": benchmarks or "(the demo run)", "demo": demo,
                "startup": startup, "targets": targets}
    rules = split_by_rule(jobs, startup)
    first, last = float(jobs["start"].min()), float(jobs["end"].max())
    covered = covered_seconds(list(zip(jobs["start"], jobs["end"])))
    timeline = {"span_s": last - first, "covered_s": covered, "idle_within_span_s": (last - first) - covered}
    if demo is not None:
        timeline |= {"before_first_job_s": first - demo["started"], "after_last_job_s": demo["ended"] - last,
                     "snakemake_only_s": demo["wall_s"] - covered}
    result = {
        "machine": machine(),
        "found": True,
        "benchmarks": benchmarks or "(the demo run, in a temporary directory)",
        "setup": {"cores": cores, "config": "config.yaml + config/demo.yaml", "startup_rounds": rounds},
        "demo": demo,
        "rules": rules,
        "jobs": jobs.drop(columns=["start", "end"]).to_dict(orient="records"),
        "startup": startup,
        "timeline": timeline,
        "summed": {key: float(sum(row[key] for row in rules)) for key in ("wall_s", "startup_s", "work_s", "cpu_s")},
        "targets": targets,
    }
    if demo is not None:
        result["targets"].append(target(f"`make demo` wall time, {cores} cores, fresh directory (load {demo['load_average_before'][0]:g})",
                                        demo["wall_s"], WALL_TARGET_S, unit="s", higher_is_better=False, at_most=True))
    return result


def fixed_jobs_text(startup: dict) -> str:
    light, torch_job = startup["light_job"], startup["torch_job"]
    return (f"A light job ({', '.join(light['modules'])}) starts in {light['startup_s']:.2f} s (goal ≤ "
            f"{LIGHT_STARTUP_TARGET_S:g} s), a torch job ({', '.join(torch_job['modules'])}) in {torch_job['startup_s']:.2f} s "
            f"(best of {startup['rounds']} fresh interpreters, Snakemake's preamble included).")


def markdown(result: dict) -> str:
    title = "### End to end: `make demo`, split by rule, job start-up apart"
    if not result["found"]:
        return (f"{title}\n\nNo benchmark files found ({result['benchmarks']}): run the demo first, or omit --benchmarks. "
                + fixed_jobs_text(result["startup"]))
    demo, startup, timeline, summed = result["demo"], result["startup"], result["timeline"], result["summed"]
    lines = [title, ""]
    if demo is not None:
        planned = sum(demo["planned_jobs"].values())
        lines += [
            f"`{demo['command'].replace(str(REPO) + '/', '')}` (the repository's Snakefile, a fresh temporary directory): "
            f"**{demo['wall_s']:.1f} s** wall (target ≤ {WALL_TARGET_S:g} s), {planned} jobs. CPU time of every process "
            f"it started {demo['cpu_s']:.1f} s (user + system), i.e. at least {demo['cpu_s'] / result['setup']['cores']:.1f} s "
            f"on {result['setup']['cores']} otherwise idle cores. Load average (1/5/15 min) before "
            f"{demo['load_average_before']}, after {demo['load_average_after']}.",
            "",
        ]
    else:
        lines += [f"From the benchmark files of a finished run ({result['benchmarks']}); the demo was not run, so "
                  "its wall time is unknown here.", ""]
    lines += [
        "| rule | jobs | wall s (sum) | start-up s (jobs × per job) | work s | CPU s (sum, sampled) | slowest job s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        *[f"| {r['rule']} | {r['jobs']} | {r['wall_s']:.1f} | {r['startup_s']:.1f} ({r['jobs']} × {r['startup_per_job_s']:.2f}) | "
          f"{r['work_s']:.1f} | {r['cpu_s']:.1f} | {r['slowest_s']:.1f} |" for r in result["rules"]],
        f"| **all jobs** | {sum(r['jobs'] for r in result['rules'])} | {summed['wall_s']:.1f} | {summed['startup_s']:.1f} | "
        f"{summed['work_s']:.1f} | {summed['cpu_s']:.1f} | |",
        "",
        f"Job start-up, best of {startup['rounds']} fresh interpreters: Python alone {startup['interpreter_s']:.2f} s; with "
        f"Snakemake's script preamble (`{'; '.join(startup['preamble_imports'])}`) {startup['preamble_s']:.2f} s; with the "
        "rule's asd imports (derived from src/asd/rules.py): "
        + "; ".join(f"{r['rule']} {r['startup_per_job_s']:.2f} s ({', '.join(r['modules'])})" for r in result["rules"]) + ". "
        + fixed_jobs_text(startup),
    ]
    covered = (f"Jobs ran during {timeline['covered_s']:.1f} s of the "
               + (f"{demo['wall_s']:.1f} s; Snakemake alone (parsing, DAG, scheduling, no job running) took "
                  f"{timeline['snakemake_only_s']:.1f} s, {timeline['before_first_job_s']:.1f} s of it before the first job "
                  f"and {timeline['after_last_job_s']:.1f} s after the last."
                  if demo is not None else
                  f"{timeline['span_s']:.1f} s from the first job's start to the last one's end "
                  f"({timeline['idle_within_span_s']:.1f} s with no job running)."))
    lines += ["", covered + " Up to --cores jobs run at once, so the sums exceed the wall time; the CPU column is "
                           "Snakemake's periodic sample (a job's last seconds are not counted)."]
    return "\n".join(lines)


if __name__ == "__main__":
    standalone(name="end_to_end", doc=__doc__, run=run, markdown=markdown,
               options={"benchmarks": "", "cores": 2, "rounds": 3})
