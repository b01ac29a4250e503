# CircuitLens attribution per (model, layer, shard): every quantile sample's pre-activation
# decomposed into heads, upstream features, embeddings, errors and biases, plus its output effect.
# Transcoders of every configured layer take part (upstream: features; downstream: output side).


rule attribution:
    input:
        unpack(all_layer_transcoders),
        unpack(attribution_selection),
        model=embedded_model_files,
        samples=paths.layer_artifact(
            RESULTS, "{model}", "{layer}", "samples", "{shard}"
        ),
        tokens=paths.tokens_file(RESULTS, "{model}"),
    output:
        contributions=paths.layer_artifact(
            RESULTS, "{model}", "{layer}", "contributions", "{shard}"
        ),
        totals=paths.layer_artifact(
            RESULTS, "{model}", "{layer}", "attribution_totals", "{shard}"
        ),
    log:
        f"{RESULTS}/logs/{{model}}/layer{{layer}}/attribution/{{shard}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{model}}/layer{{layer}}/attribution/{{shard}}.tsv"
    conda:
        "../../envs/circuit-insights.yaml"
    threads: config["threads"]
    resources:
        # frozen attention patterns: batch x length^2 x heads x layers; retries double the memory
        mem_mb=lambda wildcards, attempt: 8000 * attempt,
        runtime=240,
        gpu=model_gpus,
    params:
        model_name="{model}",
        model=subject_and_transcoder_params,
        attribution=config_section("attribution"),
        layers=configured_layers,
    script:
        "../../scripts/attribution.py"
