# Data: the raw data made available and verified (a mirror first, then the official sources), then
# tensors once. A dataset is a built-in or any `source` (knockout.sources): a torchvision class,
# an image folder, a tensors file; the library decides, the rules only pass the entry on.


rule download:
    input:
        unpack(lambda w: PLAN.raw_inputs(w.dataset)),
    output:
        "results/raw/{dataset}/manifest.json",
    log:
        "results/logs/download/{dataset}.log",
    conda:
        "../../envs/torch.yaml"
    params:
        out=subpath(output[0], parent=True),
        job=lambda w: as_json(PLAN.fetch_job(w.dataset)),
    shell:
        "knockout fetch --job {params.job:q} --out {params.out:q} > {log:q} 2>&1"


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
        job=lambda w: as_json(PLAN.prepare_job(w.dataset)),
    shell:
        "knockout prepare --job {params.job:q} --raw {params.raw:q} --out {params.out:q} > {log:q} 2>&1"
