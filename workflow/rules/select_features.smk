# Per (model, layer, shard): the features that attribution, explain and evaluate work on, made
# once and written down (those stages read the file, not the seed): the shard's named features
# (models.<m>.features, models.<m>.graph) and the seeded draw.
rule select_features:
    input:
        samples=paths.layer_artifact(
            RESULTS, "{model}", "{layer}", "samples", "{shard}"
        ),
    output:
        selection=paths.layer_artifact(
            RESULTS, "{model}", "{layer}", "features", "{shard}"
        ),
    log:
        f"{RESULTS}/logs/{{model}}/layer{{layer}}/select_features/{{shard}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{model}}/layer{{layer}}/select_features/{{shard}}.tsv"
    conda:
        "../../envs/circuit-insights.yaml"
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        explain=config_section("explain", SELECTION_KEYS),
        named=shard_named_features,
    script:
        "../../scripts/select_features.py"
