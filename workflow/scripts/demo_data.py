# Thin wrapper: the logic is asd.rules.demo_data (testable without Snakemake).
from asd.rules import demo_data, run

run(snakemake, demo_data)  # noqa: F821 (snakemake is injected by the script directive)
