# Thin wrapper: the logic is asd.rules.download (testable without Snakemake).
from asd.rules import download, run

run(snakemake, download)  # noqa: F821 (snakemake is injected by the script directive)
