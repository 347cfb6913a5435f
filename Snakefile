# knockout: ablation and intervention studies as one reproducible workflow.
# Data flows one way: config -> data -> train -> (interventions -> tables -> notebooks -> figures).
#
# Run here (`snakemake`), from your project folder (`snakemake -s <this>/Snakefile`, or `-d
# <project>` from elsewhere), or as a module of your own Snakefile (`module knockout: snakefile:
# ...; config: config`). Either way the workflow's own files (rules, notebooks, envs, report
# captions, src/) are found beside this Snakefile, and everything else (the results, and the
# relative paths of the config) is relative to the working directory.
import os

from snakemake.utils import min_version

min_version("9.0")

# This workflow's folder on disk; None when Snakemake reads it from a repository (a module given
# as github(...)): its files then come through Snakemake's source cache (`workflow_file`).
try:
    KNOCKOUT_DIR = os.fspath(workflow.current_basedir)
except TypeError:
    KNOCKOUT_DIR = None
# Without --configfile: the working directory's config.yaml (your project's study), else the
# default study beside this Snakefile. A module is given its config (`config: config`).
DEFAULT_CONFIG = next(
    (
        path
        for path in ["config.yaml", KNOCKOUT_DIR and os.path.join(KNOCKOUT_DIR, "config.yaml")]
        if path and os.path.isfile(path)
    ),
    None,
)


# A study given with --configfile replaces the default rather than merging into it.
if not workflow.overwrite_configfiles and DEFAULT_CONFIG:

    configfile: DEFAULT_CONFIG


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
