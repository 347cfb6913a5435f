# Analysis: tables -> papermill-executed notebooks -> figures, one notebook per analysis
# (the baselines, and every configured study), attached to the Snakemake report.

NOTEBOOK_OF = {
    "filter_ablation": "filter_ablation",
    "layer_swap": "layer_swap",
    "ablate_then_train": "retrain",
    "architecture": "retrain",
    "factorize": "retrain",
    "occlusion": "occlusion",
    "top_activations": "top_activations",
}
ANALYSES = ["baselines", *INTERVENTIONS]


def analysis_notebook(wildcards):
    if wildcards.analysis == "baselines":
        return "notebooks/baselines.ipynb"
    return f"notebooks/{NOTEBOOK_OF[INTERVENTIONS[wildcards.analysis]['type']]}.ipynb"


def analysis_inputs(wildcards):
    if wildcards.analysis == "baselines":
        return ["results/tables/baselines.csv", *trained_models()]
    spec = INTERVENTIONS[wildcards.analysis]
    w = Namespace(name=wildcards.analysis)
    tables = (
        []
        if spec["type"] == "top_activations"
        else [f"results/tables/{wildcards.analysis}.csv"]
    )
    return tables + per_seed_tables(w)


def analysis_parameters(wildcards):
    out_dir = f"results/figures/{wildcards.analysis}"
    if wildcards.analysis == "baselines":
        return json.dumps({"out_dir": out_dir})
    spec = INTERVENTIONS[wildcards.analysis]
    dataset = config["models"][spec["model"]]["dataset"]
    parameters = {
        "study": wildcards.analysis,
        "model": spec["model"],
        "out_dir": out_dir,
    }
    if spec["type"] in ("occlusion", "top_activations"):
        parameters |= {
            "data_meta": f"results/data/{dataset}/meta.json",
            "seed": int(SEEDS[0]),
        }
    if spec["type"] == "filter_ablation":
        parameters["data_dir"] = f"results/data/{dataset}"
    if NOTEBOOK_OF[spec["type"]] == "retrain":
        parameters["kind"] = spec["type"]
    return json.dumps(parameters, sort_keys=True)


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
