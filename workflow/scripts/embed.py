# Thin wrapper: the logic is asd.rules.embed (testable without Snakemake).
from asd.rules import embed, run

run(snakemake, embed)  # noqa: F821 (snakemake is injected by the script directive)
