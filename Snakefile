# knockout: ablation and intervention studies as one reproducible workflow.
# Data flows one way: config -> data -> train -> (interventions -> tables -> notebooks -> figures).
from snakemake.utils import min_version

min_version("9.0")


# The default study; a study given with --configfile replaces it rather than merging into it.
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/interventions.smk"
include: "workflow/rules/analysis.smk"


report: "workflow/report/workflow.rst"


rule all:
    default_target: True
    input:
        PLAN.targets(),
