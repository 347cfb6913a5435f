# Studies on trained models, by job kind (knockout.studies: evaluate, probe, retrain): one job per
# study x seed (per condition too when retraining), then the table over seeds per study.


rule unit_stats:
    input:
        unpack(lambda w: PLAN.unit_stats_inputs(w.model)),
        final="results/models/{model}/seed{seed}/final.pt",
    output:
        "results/units/{model}/seed{seed}.csv",
    log:
        "results/logs/units/{model}/seed{seed}.log",
    conda:
        "../../envs/torch.yaml"
    threads: config["threads"]
    params:
        job=lambda w: as_json(PLAN.unit_stats_job(w.model)),
        data=subpath(input.meta, parent=True),
    shell:
        "knockout unit-stats --job {params.job:q} --final {input.final:q} --data {params.data:q}"
        " --out {output:q} --threads {threads} > {log:q} 2>&1"


rule intervene:
    input:
        unpack(lambda w: PLAN.study_inputs(w.name, w.seed)),
    output:
        multiext("results/interventions/{name}/{model}/seed{seed}", **PER_SEED["evaluate"]),
    log:
        "results/logs/interventions/{name}/{model}/seed{seed}.log",
    benchmark:
        "results/benchmarks/interventions/{name}/{model}/seed{seed}.tsv"
    wildcard_constraints:
        name=names("evaluate"),
    conda:
        "../../envs/torch.yaml"
    threads: config["threads"]
    resources:
        gpu=gpus_per_job(),
    params:
        job=lambda w: as_json(PLAN.study_job(w.name)),
        optional=lambda w, input: option_args(input, "init", "epochs", "unit_stats"),
        data=subpath(input.meta, parent=True),
    shell:
        "knockout intervene --job {params.job:q} --seed {wildcards.seed} --final {input.final:q} {params.optional}"
        " --data {params.data:q} --out {output.table:q} --threads {threads} > {log:q} 2>&1"


rule probe:
    input:
        unpack(lambda w: PLAN.study_inputs(w.name, w.seed)),
    output:
        multiext("results/interventions/{name}/{model}/seed{seed}", **PER_SEED["probe"]),
    log:
        "results/logs/probe/{name}/{model}/seed{seed}.log",
    benchmark:
        "results/benchmarks/probe/{name}/{model}/seed{seed}.tsv"
    wildcard_constraints:
        name=names("probe"),
    conda:
        "../../envs/torch.yaml"
    threads: config["threads"]
    resources:
        gpu=gpus_per_job(),
    params:
        job=lambda w: as_json(PLAN.study_job(w.name)),
        data=subpath(input.meta, parent=True),
    shell:
        "knockout probe --job {params.job:q} --seed {wildcards.seed} --final {input.final:q} --data {params.data:q}"
        " --out {output.table:q} --arrays {output.arrays:q} --threads {threads} > {log:q} 2>&1"


rule retrain:
    input:
        unpack(lambda w: PLAN.study_inputs(w.name, w.seed)),
    output:
        multiext(
            "results/interventions/{name}/{model}/runs/{condition}/seed{seed}/",
            *RUN_FILES,
        ),
    log:
        "results/logs/retrain/{name}/{model}/{condition}/seed{seed}.log",
    benchmark:
        "results/benchmarks/retrain/{name}/{model}/{condition}/seed{seed}.tsv"
    wildcard_constraints:
        name=names("retrain"),
    conda:
        "../../envs/torch.yaml"
    threads: config["threads"]
    resources:
        gpu=gpus_per_job(),
    params:
        job=lambda w: as_json(PLAN.study_job(w.name)),
        optional=lambda w, input: option_args(input, "unit_stats"),
        data=subpath(input.meta, parent=True),
        out=subpath(output[0], parent=True),
    shell:
        "knockout retrain --job {params.job:q} --seed {wildcards.seed} --condition {wildcards.condition:q}"
        " --final {input.final:q} {params.optional} --data {params.data:q}"
        " --out {params.out:q} --threads {threads} > {log:q} 2>&1"


rule collect:
    input:
        unpack(lambda w: PLAN.data(w.model, train=False)),
        runs=lambda w: PLAN.run_files(w.name, w.seed),
    output:
        multiext("results/interventions/{name}/{model}/seed{seed}", **PER_SEED["retrain"]),
    log:
        "results/logs/collect/{name}/{model}/seed{seed}.log",
    wildcard_constraints:
        name=names("retrain"),
    conda:
        "../../envs/torch.yaml"
    params:
        job=lambda w: as_json(PLAN.study_job(w.name)),
        runs=lambda w: PLAN.runs(w.name, w.seed),
        data=subpath(input.meta, parent=True),
    shell:
        "knockout collect --job {params.job:q} --seed {wildcards.seed} --runs {params.runs:q}"
        " --data {params.data:q} --out {output.table:q} > {log:q} 2>&1"


rule aggregate:
    input:
        lambda w: PLAN.per_seed(w.name),
    output:
        table="results/tables/{name}.csv",
        comparisons="results/tables/{name}.comparisons.csv",
    log:
        "results/logs/aggregate/{name}.log",
    wildcard_constraints:
        name="|".join(PLAN.aggregated()) or "^$",
    conda:
        "../../envs/analysis.yaml"
    params:
        compare=lambda w: as_json(PLAN.studies[w.name].entry.get("compare", [])),
    shell:
        "knockout aggregate --inputs {input:q} --out {output.table:q}"
        " --compare {params.compare:q} --comparisons {output.comparisons:q} > {log:q} 2>&1"
