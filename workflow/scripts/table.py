# Thin wrapper: the logic is asd.rules.table (testable without Snakemake).
from asd.rules import table, run

run(snakemake, table)  # noqa: F821 (snakemake is injected by the script directive)
