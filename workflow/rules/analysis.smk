# Analysis: tables -> papermill-executed notebooks -> figures, one notebook per analysis (the
# baselines, and every configured study), each given exactly its input files; figures go into
# the Snakemake report, each with its own caption.


rule notebook:
    input:
        unpack(lambda w: PLAN.analysis(w.analysis)[0]),
        notebook=lambda w: workflow_file(f"notebooks/{PLAN.notebook(w.analysis)}.ipynb"),
    output:
        notebook="results/notebooks/{analysis}.ipynb",
        figures=report(
            directory("results/figures/{analysis}"),
            patterns=["{figure}.png"],
            caption="../report/figure.rst",
            category="{analysis}",
            labels={"analysis": "{analysis}", "figure": "{figure}"},
        ),
    log:
        "results/logs/notebook/{analysis}.log",
    wildcard_constraints:
        analysis="|".join(PLAN.analyses),
    conda:
        "../../envs/analysis.yaml"
    params:
        parameters=lambda w: as_json(PLAN.analysis(w.analysis)[1]),
        notebook=lambda w: PLAN.notebook(w.analysis),
        captions=lambda w: CAPTIONS[PLAN.notebook(w.analysis)],
    shell:
        "knockout notebook --notebook {input.notebook:q} --out {output.notebook:q}"
        " --parameters {params.parameters:q} > {log:q} 2>&1"
