# Optional (twera.enabled): per (model, layer, shard), the earlier layers' features that
# co-activate with each feature, ranked by TWERA, from the sparse activation cache.


rule twera:
    input:
        unpack(twera_inputs),
        model=embedded_model_files,
    output:
        twera=paths.layer_artifact(RESULTS, "{model}", "{layer}", "twera", "{shard}"),
    log:
        f"{RESULTS}/logs/{{model}}/layer{{layer}}/twera/{{shard}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{model}}/layer{{layer}}/twera/{{shard}}.tsv"
    conda:
        "../../envs/circuit-insights.yaml"
    threads: config["threads"]
    resources:
        mem_mb=lambda wildcards, attempt: 6000 * attempt,  # model + earlier layers' activations
        runtime=60,
        gpu=model_gpus,
    params:
        model_name="{model}",
        model=subject_and_transcoder_params,
        twera=config_section("twera"),
        projection=config["weightlens"]["projection"],
        layers=earlier_layers,
    script:
        "../../scripts/twera.py"
