# Training: one job per model x seed, writing results/models/{model}/seed{seed}/.


rule train:
    input:
        prepared,
    output:
        multiext(
            "results/models/{model}/seed{seed}/",
            "init.pt",
            "final.pt",
            "history.csv",
            "metrics.json",
        ),
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
        data=lambda w, input: os.path.dirname(input[0]),
        out=subpath(output[0], parent=True),
        spec=model_spec_json,
        device=config["device"],
    shell:
        "knockout train --data {params.data:q} --spec {params.spec:q} --seed {wildcards.seed}"
        " --out {params.out:q} --device {params.device:q} --threads {threads} > {log:q} 2>&1"


rule baselines:
    input:
        trained_models(),
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
        manifests=expand("results/raw/{dataset}/manifest.json", dataset=DATASETS),
        models=trained_models(),
    output:
        "results/provenance.json",
    log:
        "results/logs/provenance.log",
    conda:
        "../../envs/torch.yaml"
    params:
        config=json.dumps(config, sort_keys=True, default=str),
        repo=workflow.basedir,
    shell:
        "knockout provenance --config {params.config:q} --manifests {input.manifests:q}"
        " --repo {params.repo:q} --out {output:q} > {log:q} 2>&1"
