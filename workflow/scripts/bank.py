# Thin wrapper: the logic is asd.rules.bank (testable without Snakemake).
from asd.rules import bank, run

run(snakemake, bank)  # noqa: F821 (snakemake is injected by the script directive)
