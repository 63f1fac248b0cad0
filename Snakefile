# asd: BEATs + LoRA + ArcFace + KNN anomalous sound detection (DCASE 2025 Task 2).
# Stages, each a rule writing under results/<stage>/: features (indexes and caches one machine type)
# -> train (GPU, per fold) -> embed (GPU, every epoch of one machine type) -> score (banks, KNN,
# ensembles of one machine type) -> evaluate (metrics and tables of a fold) -> submission. See README.md.
import os
import sys

# This checkout's asd package, also where it is not installed (the scripts do the same).
sys.path.insert(0, os.path.join(workflow.basedir, "src"))

from asd.config import validate_config
from asd.errors import AsdError


# config.yaml beside this Snakefile (also when run with --directory elsewhere), then --configfile overlays.
configfile: os.path.join(workflow.basedir, "config.yaml")


try:
    config = validate_config(config, source="config (config.yaml + --configfile overlays)")
except AsdError as err:  # the message alone, not Snakemake's report of an exception in the Snakefile
    sys.exit(f"ERROR: {err}")


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/score.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/plots.smk"
include: "workflow/rules/pretrain.smk"  # on request only: snakemake --cores 2 pretrain_demo_backbone


rule all:
    input:
        all_targets(),
    default_target: True
