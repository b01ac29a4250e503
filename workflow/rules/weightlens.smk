# WeightLens per (model, layer, shard): token explanations from weights alone, validated by
# single-token forward passes. Layers run in order: a layer reads its upstream layers' results.


rule weightlens:
    input:
        unpack(weightlens_inputs),
        model=embedded_model_files,
        samples=paths.layer_artifact(
            RESULTS, "{model}", "{layer}", "samples", "{shard}"
        ),
        heldout=paths.layer_artifact(
            RESULTS, "{model}", "{layer}", "heldout_activations", "{shard}"
        ),
        tokens=paths.tokens_file(RESULTS, "{model}"),
    output:
        weightlens=paths.layer_artifact(
            RESULTS, "{model}", "{layer}", "weightlens", "{shard}"
        ),
    log:
        f"{RESULTS}/logs/{{model}}/layer{{layer}}/weightlens/{{shard}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{model}}/layer{{layer}}/weightlens/{{shard}}.tsv"
    conda:
        "../../envs/circuit-insights.yaml"
    threads: config["threads"]
    resources:
        mem_mb=lambda wildcards, attempt: 6000 * attempt,  # model + (vocab x feature chunk) scores
        runtime=60,
        gpu=model_gpus,
    params:
        model_name="{model}",
        model=weightlens_model_params,
        weightlens=config_section("weightlens"),
        layers=earlier_layers,
    script:
        "../../scripts/weightlens.py"
