# Per (model, layer, shard): the cache files of the whole corpus from every chunk's cache (rule
# cache), exactly those one pass over the corpus writes: sparse rows re-bucketed in context order,
# the maxima and statistics derived from them and the chunks' token counts. Both splits
# (heldout_* for the held-out one).


rule merge_cache:
    input:
        chunks=cache_chunk_dirs,
    output:
        activations=paths.layer_artifact(
            RESULTS, "{model}", "{layer}", "activations", "{shard}"
        ),
        maxima=paths.layer_artifact(RESULTS, "{model}", "{layer}", "maxima", "{shard}"),
        feature_stats=paths.layer_artifact(
            RESULTS, "{model}", "{layer}", "feature_stats", "{shard}"
        ),
        heldout_activations=paths.layer_artifact(
            RESULTS, "{model}", "{layer}", "heldout_activations", "{shard}"
        ),
        heldout_maxima=paths.layer_artifact(
            RESULTS, "{model}", "{layer}", "heldout_maxima", "{shard}"
        ),
        heldout_feature_stats=paths.layer_artifact(
            RESULTS, "{model}", "{layer}", "heldout_feature_stats", "{shard}"
        ),
    log:
        f"{RESULTS}/logs/{{model}}/layer{{layer}}/merge_cache/{{shard}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{model}}/layer{{layer}}/merge_cache/{{shard}}.tsv"
    conda:
        "../../envs/circuit-insights.yaml"
    resources:
        mem_mb=4000,  # one feature bucket of every chunk at a time
        runtime=30,
    script:
        "../../scripts/merge_cache.py"
