# Analysis: tables -> papermill-executed notebooks -> figures, one notebook per analysis
# (the baselines, and every configured study), attached to the Snakemake report.


rule notebook:
    input:
        notebook=analysis_notebook,
        tables=analysis_inputs,
    output:
        notebook="results/notebooks/{analysis}.ipynb",
        figures=report(
            directory("results/figures/{analysis}"),
            patterns=["{figure}.png"],
            caption="../report/figures.rst",
            category="{analysis}",
            labels={"analysis": "{analysis}", "figure": "{figure}"},
        ),
    log:
        "results/logs/notebook/{analysis}.log",
    wildcard_constraints:
        analysis="|".join(ANALYSES),
    conda:
        "../../envs/analysis.yaml"
    params:
        parameters=analysis_parameters,
    shell:
        "knockout notebook --notebook {input.notebook:q} --out {output.notebook:q}"
        " --parameters {params.parameters:q} > {log:q} 2>&1"
