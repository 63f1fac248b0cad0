# Thin wrapper: the logic is asd.rules.score (testable without Snakemake). `snakemake` is injected
# by the script directive; src/ goes first on the path so that conda envs use this checkout's asd.
import sys

sys.path.insert(0, f"{snakemake.scriptdir}/../../src")  # noqa: F821

from asd.rules import score, run  # noqa: E402

run(snakemake, score)  # noqa: F821
