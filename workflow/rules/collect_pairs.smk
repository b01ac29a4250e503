# The MLP input -> output pairs that trained transcoders learn from, per model: the first
# train_contexts contexts of the caching split and the held-out split run once through the model
# to the deepest configured layer, every layer's pairs read on the way, one file per layer. The
# folder is temporary (~450 MB a layer on the embedded default): removed once every layer's
# train_transcoder job has read its file, made again when one reruns.


rule collect_pairs:
    input:
        model=embedded_model_files,
        tokens=paths.tokens_file(RESULTS, "{model}"),
    output:
        pairs=temp(directory(paths.mlp_pairs_dir(RESULTS, "{model}"))),
    log:
        f"{RESULTS}/logs/{{model}}/collect_pairs.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{model}}/collect_pairs.tsv"
    conda:
        "../../envs/circuit-insights.yaml"
    threads: config["threads"]
    resources:
        mem_mb=pairs_mem_mb,  # model + every layer's pairs; doubled on the retry
        runtime=60,
        gpu=model_gpus,
    params:
        model_name="{model}",
        model=pairs_params,
        layers=configured_layers,
    script:
        "../../scripts/collect_pairs.py"
