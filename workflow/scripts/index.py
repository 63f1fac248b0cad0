# Thin wrapper: the logic is asd.rules.index (testable without Snakemake).
from asd.rules import index, run

run(snakemake, index)  # noqa: F821 (snakemake is injected by the script directive)
