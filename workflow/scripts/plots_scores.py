# Thin wrapper: the logic is asd.rules.plots_scores (testable without Snakemake).
from asd.rules import plots_scores, run

run(snakemake, plots_scores)  # noqa: F821 (snakemake is injected by the script directive)
