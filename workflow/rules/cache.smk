# The sparse activation cache: one forward pass per (model, layer) writes every feature shard,
# for the caching split and (heldout_*) the held-out evaluation split.
# A rule per model, because the shard list (its outputs) depends on the model's feature count.

for cached_model in config["models"]:

    rule:
        name:
            f"cache_{cached_model}"
        input:
            model=embedded_model_files_of(cached_model),
            tokens=paths.tokens_file(RESULTS, cached_model),
            transcoder=transcoder_files_of(cached_model),
        output:
            activations=shard_outputs(cached_model, "activations"),
            maxima=shard_outputs(cached_model, "maxima"),
            feature_stats=shard_outputs(cached_model, "feature_stats"),
            heldout_activations=shard_outputs(cached_model, "heldout_activations"),
            heldout_maxima=shard_outputs(cached_model, "heldout_maxima"),
            heldout_feature_stats=shard_outputs(cached_model, "heldout_feature_stats"),
        log:
            f"{RESULTS}/logs/{cached_model}/layer{{layer}}/cache.log",
        benchmark:
            f"{RESULTS}/benchmarks/{cached_model}/layer{{layer}}/cache.tsv"
        conda:
            "../../envs/circuit-insights.yaml"
        threads: config["threads"]
        resources:
            mem_mb=lambda wildcards, attempt: 6000 * attempt,  # model + one batch of activations
            runtime=240,
            gpu=gpus_of(cached_model),
        params:
            model_name=cached_model,
            model=rule_params.subject_params(config, cached_model, transcoders="load"),
            cache=config_section("cache", ["batch_size", "exclude_bos"]),
        script:
            "../../scripts/cache.py"
