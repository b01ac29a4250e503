# WeightLens per (model, layer, shard): token explanations from weights alone, validated by
# single-token forward passes. Layers run in order: a layer reads its upstream layers' results.


rule weightlens:
    input:
        unpack(weightlens_inputs),
        model=embedded_model_files,
        samples=f"{RESULTS}/{{model}}/layer{{layer}}/samples/{{shard}}.parquet",
        heldout=f"{RESULTS}/{{model}}/layer{{layer}}/heldout_activations/{{shard}}.parquet",
        tokens=f"{RESULTS}/{{model}}/corpus/tokens.parquet",
    output:
        weightlens=f"{RESULTS}/{{model}}/layer{{layer}}/weightlens/{{shard}}.parquet",
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


# One table per layer: what later layers' WeightLens jobs read as their upstream results.
rule gather_weightlens:
    input:
        shards=layer_weightlens_shards,
    output:
        table=f"{RESULTS}/{{model}}/layer{{layer}}/weightlens.parquet",
    log:
        f"{RESULTS}/logs/{{model}}/layer{{layer}}/gather_weightlens.log",
    localrule: True
    conda:
        "../../envs/circuit-insights.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "../../scripts/gather_weightlens.py"
