# Thin wrapper: the logic is asd.rules.plots_training (testable without Snakemake).
from asd.rules import plots_training, run

run(snakemake, plots_training)  # noqa: F821 (snakemake is injected by the script directive)
