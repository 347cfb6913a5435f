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
        job=lambda w: PLAN.unit_stats_job(w.model).as_json(),
        data=subpath(input.meta, parent=True),
    shell:
        "knockout unit-stats --job {params.job:q} --final {input.final:q} --data {params.data:q}"
        " --out {output:q} --threads {threads} > {log:q} 2>&1"


rule unit_values:
    input:
        unpack(lambda w: PLAN.unit_stats_inputs(w.model)),
        final="results/models/{model}/seed{seed}/final.pt",
    output:
        "results/units/{model}/seed{seed}.values.pt",
    log:
        "results/logs/units/{model}/seed{seed}.values.log",
    conda:
        "../../envs/torch.yaml"
    threads: config["threads"]
    resources:
        gpu=gpus_per_job(),
    params:
        job=lambda w: PLAN.unit_values_job(w.model).as_json(),
        data=subpath(input.meta, parent=True),
    shell:
        "knockout unit-values --job {params.job:q} --final {input.final:q} --data {params.data:q}"
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
        name=names("evaluate", sharded=False),
    conda:
        "../../envs/torch.yaml"
    threads: config["threads"]
    resources:
        gpu=gpus_per_job(),
    params:
        job=lambda w: PLAN.study_job(w.name).as_json(),
        optional=lambda w, input: option_args(input, "init", "epochs", "unit_stats", "unit_values"),
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
        name=names("probe", sharded=False),
    conda:
        "../../envs/torch.yaml"
    threads: config["threads"]
    resources:
        gpu=gpus_per_job(),
    params:
        job=lambda w: PLAN.study_job(w.name).as_json(),
        data=subpath(input.meta, parent=True),
    shell:
        "knockout probe --job {params.job:q} --seed {wildcards.seed} --final {input.final:q} --data {params.data:q}"
        " --out {output.table:q} --arrays {output.arrays:q} --threads {threads} > {log:q} 2>&1"


# --- Sharded studies (`shards: N` or `auto`): each shard its own job (own sbatch job under
# profiles/slurm), then one gather writes the same per-seed files as intervene or probe would.


checkpoint shard_plan:
    input:
        unpack(lambda w: PLAN.study_inputs(w.name, w.seed)),
    output:
        "results/interventions/{name}/{model}/shards/seed{seed}/plan.json",
    log:
        "results/logs/shards/{name}/{model}/seed{seed}.plan.log",
    wildcard_constraints:
        name="|".join(n for n, s in PLAN.studies.items() if s.shards == "auto") or "^$",
    conda:
        "../../envs/torch.yaml"
    threads: config["threads"]
    resources:
        gpu=gpus_per_job(),
    params:
        job=lambda w: PLAN.shard_plan_job(w.name).as_json(),
        optional=lambda w, input: option_args(input, "init", "epochs", "unit_stats", "unit_values"),
        data=subpath(input.meta, parent=True),
    shell:
        "knockout shard-plan --job {params.job:q} --seed {wildcards.seed} --final {input.final:q} {params.optional}"
        " --data {params.data:q} --out {output:q} --threads {threads} > {log:q} 2>&1"


rule intervene_shard:
    input:
        unpack(shard_inputs),
    output:
        "results/interventions/{name}/{model}/shards/seed{seed}/shard{shard}.pt",
    log:
        "results/logs/shards/{name}/{model}/seed{seed}.shard{shard}.log",
    benchmark:
        "results/benchmarks/shards/{name}/{model}/seed{seed}.shard{shard}.tsv"
    wildcard_constraints:
        name=names("evaluate", sharded=True),
        shard=r"\d+",
    conda:
        "../../envs/torch.yaml"
    threads: config["threads"]
    resources:
        gpu=gpus_per_job(),
    params:
        job=lambda w: PLAN.study_job(w.name).as_json(),
        total=shard_count_args,
        optional=lambda w, input: option_args(input, "init", "epochs", "unit_stats", "unit_values"),
        data=subpath(input.meta, parent=True),
    shell:
        "knockout intervene-shard --job {params.job:q} --seed {wildcards.seed} --shard {wildcards.shard}"
        " {params.total} --final {input.final:q} {params.optional} --data {params.data:q}"
        " --out {output:q} --threads {threads} > {log:q} 2>&1"


rule probe_shard:
    input:
        unpack(shard_inputs),
    output:
        "results/interventions/{name}/{model}/shards/seed{seed}/shard{shard}.npz",
    log:
        "results/logs/shards/{name}/{model}/seed{seed}.shard{shard}.log",
    benchmark:
        "results/benchmarks/shards/{name}/{model}/seed{seed}.shard{shard}.tsv"
    wildcard_constraints:
        name=names("probe", sharded=True),
        shard=r"\d+",
    conda:
        "../../envs/torch.yaml"
    threads: config["threads"]
    resources:
        gpu=gpus_per_job(),
    params:
        job=lambda w: PLAN.study_job(w.name).as_json(),
        total=shard_count_args,
        data=subpath(input.meta, parent=True),
    shell:
        "knockout probe-shard --job {params.job:q} --seed {wildcards.seed} --shard {wildcards.shard}"
        " {params.total} --final {input.final:q} --data {params.data:q}"
        " --out {output:q} --threads {threads} > {log:q} 2>&1"


rule gather:
    input:
        unpack(lambda w: PLAN.data(w.model, train=False)),
        shards=shard_outputs,
    output:
        multiext("results/interventions/{name}/{model}/seed{seed}", **PER_SEED["evaluate"]),
    log:
        "results/logs/shards/{name}/{model}/seed{seed}.gather.log",
    wildcard_constraints:
        name=names("evaluate", sharded=True),
    conda:
        "../../envs/torch.yaml"
    params:
        job=lambda w: PLAN.study_job(w.name).as_json(),
        data=subpath(input.meta, parent=True),
    shell:
        "knockout gather --job {params.job:q} --seed {wildcards.seed} --inputs {input.shards:q}"
        " --data {params.data:q} --out {output.table:q} > {log:q} 2>&1"


rule gather_probe:
    input:
        unpack(lambda w: PLAN.data(w.model, train=False)),
        shards=shard_outputs,
    output:
        multiext("results/interventions/{name}/{model}/seed{seed}", **PER_SEED["probe"]),
    log:
        "results/logs/shards/{name}/{model}/seed{seed}.gather.log",
    wildcard_constraints:
        name=names("probe", sharded=True),
    conda:
        "../../envs/torch.yaml"
    params:
        job=lambda w: PLAN.study_job(w.name).as_json(),
        data=subpath(input.meta, parent=True),
    shell:
        "knockout gather-probe --job {params.job:q} --seed {wildcards.seed} --inputs {input.shards:q}"
        " --data {params.data:q} --out {output.table:q} --arrays {output.arrays:q} > {log:q} 2>&1"


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
        job=lambda w: PLAN.study_job(w.name).as_json(),
        optional=lambda w, input: option_args(input, "unit_stats", "unit_values"),
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
        job=lambda w: PLAN.study_job(w.name).as_json(),
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
