# The sparse activation cache, per (model, corpus chunk): the chunk's contexts (both splits) run
# once through the model to the deepest configured layer, every layer's transcoder input read on
# the way and encoded into that layer's shards. Rule merge_cache joins the chunks per (layer,
# shard) into the files every later stage reads; chunks run in parallel and rerun alone.


rule cache:
    input:
        unpack(all_layer_transcoders),
        model=embedded_model_files,
        tokens=paths.tokens_file(RESULTS, "{model}"),
    output:
        chunk=directory(paths.cache_chunk_dir(RESULTS, "{model}", "{chunk}")),
    log:
        f"{RESULTS}/logs/{{model}}/cache/{{chunk}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{model}}/cache/{{chunk}}.tsv"
    conda:
        "../../envs/circuit-insights.yaml"
    threads: config["threads"]
    resources:
        mem_mb=cache_mem_mb,  # model + every layer's statistics; doubled on the retry
        runtime=240,
        gpu=model_gpus,
    params:
        model_name="{model}",
        model=subject_and_transcoder_params,
        cache=config_section("cache", ["batch_size", "exclude_bos", "shard_size"]),
        layers=configured_layers,
    script:
        "../../scripts/cache.py"
