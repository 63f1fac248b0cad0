# Thin wrapper: the logic is asd.rules.metrics (testable without Snakemake).
from asd.rules import metrics, run

run(snakemake, metrics)  # noqa: F821 (snakemake is injected by the script directive)
