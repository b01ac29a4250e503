# The sparse activation cache: one forward pass per (model, layer) writes every feature shard.
# A rule per model, because the shard list (its outputs) depends on the model's feature count.

for cached_model in config["models"]:

    rule:
        name:
            f"cache_{cached_model}"
        input:
            model=embedded_model_files_of(cached_model),
            tokens=f"{RESULTS}/{cached_model}/corpus/tokens.parquet",
            transcoder=transcoder_files_of(cached_model),
        output:
            activations=shard_outputs(cached_model, "activations"),
            maxima=shard_outputs(cached_model, "maxima"),
            feature_stats=shard_outputs(cached_model, "feature_stats"),
        params:
            model=config["models"][cached_model],
            cache=config["cache"],
            resources=RESOURCES,
            results=RESULTS,
            threads=config["threads"],
        log:
            f"logs/{cached_model}/layer{{layer}}/cache.log",
        benchmark:
            f"benchmarks/snakemake/{cached_model}/layer{{layer}}/cache.tsv"
        threads: config["threads"]
        resources:
            mem_mb=lambda wildcards, attempt: 6000 * attempt,  # model + one batch of activations
            runtime=240,
        script:
            "../../scripts/cache.py"
