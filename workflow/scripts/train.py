# Thin wrapper: the logic is asd.rules.train (testable without Snakemake).
from asd.rules import train, run

run(snakemake, train)  # noqa: F821 (snakemake is injected by the script directive)
