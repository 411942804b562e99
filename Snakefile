# alta: raw chest radiograph DICOMs + free-text reports -> MRM pretraining -> ALTA alignment -> benchmark scores.
#
#   snakemake --cores 2 all              the embedded demo (config.yaml), on a laptop
#   snakemake --profile slurm all        a Slurm GPU cluster (profiles/slurm)
#
# This file is wiring only: rules live in workflow/rules/*.smk and every rule calls an `alta` module.

import os
import sys

from alta import config as alta_config


configfile: "config.yaml"


# One-line errors naming the key, before anything runs (alta/config.py); then each training section becomes the
# settings its stage runs with (alta/recipes.py), so the rules' params carry them and a recipe change reruns the
# training stages.
try:
    alta_config.validate(config, source="config")
    alta_config.check_paths(config)
except alta_config.ConfigError as _err:
    sys.stderr.write(f"{_err}\n")
    sys.exit(1)
alta_config.resolve_recipe(config)


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"


rule all:
    input:
        rules.evaluate.output.report,


rule data:
    input:
        rules.pair.output.pairs,


onstart:
    start_tracking(config)


onsuccess:
    end_tracking("FINISHED")


onerror:
    end_tracking("FAILED")
