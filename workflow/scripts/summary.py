# Thin wrapper: the logic is asd.rules.summary (testable without Snakemake).
from asd.rules import summary, run

run(snakemake, summary)  # noqa: F821 (snakemake is injected by the script directive)
