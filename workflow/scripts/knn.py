# Thin wrapper: the logic is asd.rules.knn (testable without Snakemake).
from asd.rules import knn, run

run(snakemake, knn)  # noqa: F821 (snakemake is injected by the script directive)
