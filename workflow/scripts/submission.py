# Thin wrapper: the logic is asd.rules.submission (testable without Snakemake).
from asd.rules import submission, run

run(snakemake, submission)  # noqa: F821 (snakemake is injected by the script directive)
