# Data: verified raw files (mirror first, then the official sources), then tensors once.


rule download:
    output:
        "results/raw/{dataset}/manifest.json",
    log:
        "results/logs/download/{dataset}.log",
    conda:
        "../../envs/torch.yaml"
    params:
        out=subpath(output[0], parent=True),
        mirrors=lambda w: shlex.join(f"--mirror={m}" for m in config["data"]["mirrors"]),
        download="" if config["data"]["download"] else "--no-download",
    shell:
        "knockout fetch --dataset {wildcards.dataset:q} --out {params.out:q} {params.mirrors} {params.download} > {log:q} 2>&1"


rule prepare:
    input:
        rules.download.output,
    output:
        multiext("results/data/{dataset}/", "train.npz", "test.npz", "meta.json"),
    log:
        "results/logs/prepare/{dataset}.log",
    conda:
        "../../envs/torch.yaml"
    params:
        raw=subpath(input[0], parent=True),
        out=subpath(output[0], parent=True),
        train_subset=lambda w: config["datasets"][w.dataset]["train_subset"] or "",
        test_subset=lambda w: config["datasets"][w.dataset]["test_subset"] or "",
        seed=lambda w: config["datasets"][w.dataset]["subset_seed"],
    shell:
        "knockout prepare --dataset {wildcards.dataset:q} --raw {params.raw:q} --out {params.out:q}"
        " --train-subset={params.train_subset:q} --test-subset={params.test_subset:q} --seed {params.seed} > {log:q} 2>&1"
