# Training: one job per model x seed, writing results/models/{model}/seed{seed}/.


rule train:
    input:
        unpack(lambda w: PLAN.data(w.model)),
    output:
        multiext(
            "results/models/{model}/seed{seed}/",
            "init.pt",
            "final.pt",
            "history.csv",
            "metrics.json",
        ),
        epochs=directory("results/models/{model}/seed{seed}/epochs"),
    log:
        "results/logs/train/{model}/seed{seed}.log",
    benchmark:
        "results/benchmarks/train/{model}/seed{seed}.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: config["threads"]
    resources:
        gpu=gpus_per_job(),
    params:
        job=lambda w: as_json(PLAN.train_job(w.model)),
        out=subpath(output[0], parent=True),
    shell:
        "knockout train --job {params.job:q} --seed {wildcards.seed} --train {input.train:q} --test {input.test:q}"
        " --meta {input.meta:q} --out {params.out:q} --threads {threads} > {log:q} 2>&1"


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
        expand("results/raw/{dataset}/manifest.json", dataset=PLAN.datasets),
    output:
        "results/provenance.json",
    log:
        "results/logs/provenance.log",
    conda:
        "../../envs/torch.yaml"
    params:
        config=as_json(config),
        repo=workflow.basedir,
    shell:
        "knockout provenance --config {params.config:q} --manifests {input:q}"
        " --repo {params.repo:q} --out {output:q} > {log:q} 2>&1"
