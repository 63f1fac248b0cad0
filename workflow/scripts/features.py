# Thin wrapper: the logic is asd.rules.features (testable without Snakemake).
from asd.rules import features, run

run(snakemake, features)  # noqa: F821 (snakemake is injected by the script directive)
