# Training: one job per model x seed, writing results/models/{model}/seed{seed}/; or, for a model
# whose trained checkpoints the user gives, those checkpoints adopted into the same files.


rule train:
    input:
        unpack(lambda w: PLAN.data(w.model)),
        unpack(lambda w: PLAN.code(w.model)),
    output:
        multiext("results/models/{model}/seed{seed}/", *MODEL_FILES),
        epochs=directory("results/models/{model}/seed{seed}/epochs"),
    log:
        "results/logs/train/{model}/seed{seed}.log",
    benchmark:
        "results/benchmarks/train/{model}/seed{seed}.tsv"
    wildcard_constraints:
        model="|".join(PLAN.trained_models()) or "^$",
    conda:
        "../../envs/torch.yaml"
    threads: config["threads"]
    resources:
        gpu=gpus_per_job(),
    params:
        job=lambda w: PLAN.train_job(w.model).as_json(),
        data=subpath(input.meta, parent=True),
        out=subpath(output[0], parent=True),
    shell:
        "knockout train --job {params.job:q} --seed {wildcards.seed} --data {params.data:q}"
        " --out {params.out:q} --threads {threads} > {log:q} 2>&1"


rule adopt:
    input:
        unpack(lambda w: PLAN.data(w.model, train=False)),
        unpack(lambda w: PLAN.code(w.model)),
        source=lambda w: PLAN.adopt_inputs(w.model, w.seed, "final"),
    output:
        final="results/models/{model}/seed{seed}/final.pt",
        metrics="results/models/{model}/seed{seed}/metrics.json",
    log:
        "results/logs/adopt/{model}/seed{seed}.log",
    wildcard_constraints:
        model="|".join(PLAN.adopted_models()) or "^$",
    conda:
        "../../envs/torch.yaml"
    threads: config["threads"]
    params:
        job=lambda w: PLAN.adopt_job(w.model).as_json(),
        data=subpath(input.meta, parent=True),
        sources=lambda w, input: (shlex.join(["--sources", *input.source]) if input.source else ""),
    shell:
        "knockout adopt --job {params.job:q} --seed {wildcards.seed} {params.sources} --data {params.data:q}"
        " --out {output.final:q} --metrics {output.metrics:q} --threads {threads} > {log:q} 2>&1"


rule adopt_init:
    input:
        unpack(lambda w: PLAN.code(w.model)),
        source=lambda w: PLAN.adopt_inputs(w.model, w.seed, "init"),
        meta=lambda w: PLAN.data(w.model)["meta"],
    output:
        "results/models/{model}/seed{seed}/init.pt",
    log:
        "results/logs/adopt/{model}/seed{seed}.init.log",
    wildcard_constraints:
        model="|".join(PLAN.adopted_models("init")) or "^$",
    conda:
        "../../envs/torch.yaml"
    params:
        job=lambda w: PLAN.adopt_job(w.model).as_json(),
        data=subpath(input.meta, parent=True),
    shell:
        "knockout adopt --job {params.job:q} --seed {wildcards.seed} --sources {input.source:q}"
        " --data {params.data:q} --out {output:q} > {log:q} 2>&1"


rule adopt_epochs:
    input:
        unpack(lambda w: PLAN.code(w.model)),
        sources=lambda w: PLAN.adopt_inputs(w.model, w.seed, "epochs"),
        meta=lambda w: PLAN.data(w.model)["meta"],
    output:
        directory("results/models/{model}/seed{seed}/epochs"),
    log:
        "results/logs/adopt/{model}/seed{seed}.epochs.log",
    wildcard_constraints:
        model="|".join(PLAN.adopted_models("epochs")) or "^$",
    conda:
        "../../envs/torch.yaml"
    params:
        job=lambda w: PLAN.adopt_job(w.model).as_json(),
        data=subpath(input.meta, parent=True),
    shell:
        "knockout adopt --job {params.job:q} --seed {wildcards.seed} --sources {input.sources:q}"
        " --data {params.data:q} --out {output:q} > {log:q} 2>&1"


rule baselines:
    input:
        PLAN.metrics(),
    output:
        table="results/tables/baselines.csv",
        per_seed="results/tables/baselines.per_seed.csv",
    log:
        "results/logs/baselines.log",
    conda:
        "../../envs/analysis.yaml"
    shell:
        "knockout baselines --inputs {input:q} --out {output.table:q} --per-seed {output.per_seed:q} > {log:q} 2>&1"


rule provenance:
    input:
        manifests=expand("results/raw/{dataset}/manifest.json", dataset=PLAN.datasets),
        metas=expand("results/data/{view}/meta.json", view=PLAN.views),
    output:
        "results/provenance.json",
    log:
        "results/logs/provenance.log",
    conda:
        "../../envs/torch.yaml"
    params:
        config=lambda w: as_json(config),
        preprocess=lambda w: as_json({m: PLAN.preprocess(m) | {"view": PLAN.view(m)} for m in PLAN.models}),
        repo=shlex.join(["--repo", KNOCKOUT_DIR]) if KNOCKOUT_DIR else "",  # the workflow's git commit
    shell:
        "knockout provenance --config {params.config:q} --manifests {input.manifests:q} --metas {input.metas:q}"
        " --preprocess {params.preprocess:q} {params.repo} --out {output:q} > {log:q} 2>&1"
