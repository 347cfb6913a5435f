# Data: the raw data made available and verified (a mirror first, then the official sources), then
# prepared once per view (the dataset at the resize and crop its models' preprocessing asks for)
# as uint8 arrays the jobs stream. A dataset is a built-in or any `source` (knockout.sources): a
# torchvision class, an image folder, a tensors file, your own Dataset; the library decides, the
# rules only pass the entry on.


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
        job=lambda w: PLAN.download_job(w.dataset).as_json(),
    shell:
        "knockout download --job {params.job:q} --out {params.out:q} > {log:q} 2>&1"


rule prepare:
    input:
        lambda w: f"{PLAN.raw_dir(w.view)}/manifest.json",
    output:
        multiext("results/data/{view}/", *VIEW_FILES),
    log:
        "results/logs/prepare/{view}.log",
    benchmark:
        "results/benchmarks/prepare/{view}.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: config["threads"]
    params:
        raw=subpath(input[0], parent=True),
        out=subpath(output[0], parent=True),
        job=lambda w: PLAN.prepare_job(w.view).as_json(),
    shell:
        "knockout prepare --job {params.job:q} --raw {params.raw:q} --out {params.out:q} --threads {threads} > {log:q} 2>&1"
