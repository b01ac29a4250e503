# Per (model, layer, shard): quantile samples (CircuitLens), top-k contexts (MaxAct baseline) and
# random non-activating contexts (evaluation).


rule sample:
    input:
        maxima=paths.layer_artifact(RESULTS, "{model}", "{layer}", "maxima", "{shard}"),
        tokens=paths.tokens_file(RESULTS, "{model}"),
    output:
        samples=paths.layer_artifact(
            RESULTS, "{model}", "{layer}", "samples", "{shard}"
        ),
    log:
        f"{RESULTS}/logs/{{model}}/layer{{layer}}/sample/{{shard}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{model}}/layer{{layer}}/sample/{{shard}}.tsv"
    conda:
        "../../envs/circuit-insights.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        sampling=config_section("sampling"),
    script:
        "../../scripts/sample.py"
