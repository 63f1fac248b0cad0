# Thin wrapper: the logic is asd.rules.ensemble (testable without Snakemake).
from asd.rules import ensemble, run

run(snakemake, ensemble)  # noqa: F821 (snakemake is injected by the script directive)
