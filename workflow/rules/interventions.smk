# Interventions on trained networks: unit statistics, one job per study x seed, then the table
# over seeds per study.


rule unit_stats:
    input:
        model="results/models/{model}/seed{seed}/final.pt",
        data=prepared,
    output:
        "results/units/{model}/seed{seed}.csv",
    log:
        "results/logs/units/{model}/seed{seed}.log",
    conda:
        "../../envs/torch.yaml"
    threads: config["threads"]
    params:
        data=lambda w, input: os.path.dirname(input.data[0]),
        device=config["device"],
    shell:
        "knockout units --model {input.model:q} --data {params.data:q} --out {output:q}"
        " --device {params.device:q} --threads {threads} > {log:q} 2>&1"


rule intervene:
    input:
        unpack(intervention_inputs),
    output:
        table="results/interventions/{name}/{model}/seed{seed}.csv",
        per_class="results/interventions/{name}/{model}/seed{seed}.per_class.csv",
        confusion="results/interventions/{name}/{model}/seed{seed}.confusion.csv",
        examples="results/interventions/{name}/{model}/seed{seed}.examples.parquet",
    log:
        "results/logs/interventions/{name}/{model}/seed{seed}.log",
    benchmark:
        "results/benchmarks/interventions/{name}/{model}/seed{seed}.tsv"
    wildcard_constraints:
        name="|".join(EVALUATED_STUDIES) or "^$",
    conda:
        "../../envs/torch.yaml"
    threads: config["threads"]
    resources:
        gpu=gpus_per_job(),
    params:
        spec=study_spec_json,
        model_dir=lambda w, input: os.path.dirname(input.final),
        data=lambda w, input: os.path.dirname(input.data[0]),
        units=lambda w, input: input.units if "units" in input.keys() else "",
        device=config["device"],
        budget=lambda w: study(w)["budget_mb"],
    shell:
        "knockout intervene --name {wildcards.name:q} --spec {params.spec:q} --model {wildcards.model:q}"
        " --seed {wildcards.seed} --model-dir {params.model_dir:q} --data {params.data:q} --unit-stats={params.units:q}"
        " --out {output.table:q} --device {params.device:q} --budget-mb {params.budget} --threads {threads} > {log:q} 2>&1"


rule probe:
    input:
        final="results/models/{model}/seed{seed}/final.pt",
        data=prepared,
    output:
        table="results/interventions/{name}/{model}/seed{seed}.csv",
        arrays="results/interventions/{name}/{model}/seed{seed}.npz",
    log:
        "results/logs/probe/{name}/{model}/seed{seed}.log",
    benchmark:
        "results/benchmarks/probe/{name}/{model}/seed{seed}.tsv"
    wildcard_constraints:
        name="|".join(PROBE_STUDIES) or "^$",
    conda:
        "../../envs/torch.yaml"
    threads: config["threads"]
    resources:
        gpu=gpus_per_job(),
    params:
        spec=study_spec_json,
        model_dir=lambda w, input: os.path.dirname(input.final),
        data=lambda w, input: os.path.dirname(input.data[0]),
        device=config["device"],
    shell:
        "knockout probe --name {wildcards.name:q} --spec {params.spec:q} --model {wildcards.model:q} --seed {wildcards.seed}"
        " --model-dir {params.model_dir:q} --data {params.data:q} --out {output.table:q} --device {params.device:q}"
        " --threads {threads} > {log:q} 2>&1"


rule retrain:
    input:
        unpack(intervention_inputs),
    output:
        multiext(
            "results/interventions/{name}/{model}/runs/{condition}/seed{seed}/",
            "init.pt",
            "final.pt",
            "history.csv",
            "metrics.json",
            "predictions.pt",
            "condition.json",
        ),
    log:
        "results/logs/retrain/{name}/{model}/{condition}/seed{seed}.log",
    benchmark:
        "results/benchmarks/retrain/{name}/{model}/{condition}/seed{seed}.tsv"
    wildcard_constraints:
        name="|".join(RETRAINED_STUDIES) or "^$",
    conda:
        "../../envs/torch.yaml"
    threads: config["threads"]
    resources:
        gpu=gpus_per_job(),
    params:
        spec=study_spec_json,
        train=model_train_json,
        model_dir=lambda w, input: os.path.dirname(input.final),
        data=lambda w, input: os.path.dirname(input.data[0]),
        units=lambda w, input: input.units if "units" in input.keys() else "",
        out=subpath(output[0], parent=True),
        device=config["device"],
    shell:
        "knockout retrain --name {wildcards.name:q} --spec {params.spec:q} --model {wildcards.model:q}"
        " --seed {wildcards.seed} --condition {wildcards.condition:q} --model-dir {params.model_dir:q}"
        " --data {params.data:q} --train {params.train:q} --unit-stats={params.units:q} --out {params.out:q}"
        " --device {params.device:q} --threads {threads} > {log:q} 2>&1"


rule collect:
    input:
        runs=lambda w: [f"{run}/condition.json" for run in retrained_runs(w)],
        data=prepared,
    output:
        table="results/interventions/{name}/{model}/seed{seed}.csv",
        per_class="results/interventions/{name}/{model}/seed{seed}.per_class.csv",
        confusion="results/interventions/{name}/{model}/seed{seed}.confusion.csv",
        examples="results/interventions/{name}/{model}/seed{seed}.examples.parquet",
    log:
        "results/logs/collect/{name}/{model}/seed{seed}.log",
    wildcard_constraints:
        name="|".join(RETRAINED_STUDIES) or "^$",
    conda:
        "../../envs/torch.yaml"
    params:
        spec=study_spec_json,
        runs=retrained_runs,
        data=lambda w, input: os.path.dirname(input.data[0]),
    shell:
        "knockout collect --name {wildcards.name:q} --spec {params.spec:q} --model {wildcards.model:q}"
        " --seed {wildcards.seed} --runs {params.runs:q} --data {params.data:q} --out {output.table:q} > {log:q} 2>&1"


rule aggregate:
    input:
        per_seed_tables,
    output:
        table="results/tables/{name}.csv",
        comparisons="results/tables/{name}.comparisons.csv",
    log:
        "results/logs/aggregate/{name}.log",
    conda:
        "../../envs/analysis.yaml"
    params:
        compare=lambda w: json.dumps(study(w).get("compare", [])),
    shell:
        "knockout aggregate --inputs {input:q} --out {output.table:q}"
        " --compare {params.compare:q} --comparisons {output.comparisons:q} > {log:q} 2>&1"
