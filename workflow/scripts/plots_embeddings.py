# Thin wrapper: the logic is asd.rules.plots_embeddings (testable without Snakemake).
from asd.rules import plots_embeddings, run

run(snakemake, plots_embeddings)  # noqa: F821 (snakemake is injected by the script directive)
