# FADE scores per (model, layer, shard, variant): Clarity, Responsiveness, Purity, Faithfulness of
# each explained feature's description, rated by the same LLM (docs/fade.md). An imported variant
# (models.<m>.imports) is scored on the features evaluate.variants are compared on.


rule evaluate:
    input:
        model=embedded_model_files,
        llm=llm_model_files,
        transcoder=layer_transcoder_files,
        selection=paths.layer_artifact(
            RESULTS, "{model}", "{layer}", "features", "{shard}"
        ),
        explanations=paths.layer_artifact(
            RESULTS, "{model}", "{layer}", "explanations", "{shard}"
        ),
        imported=imported_of_variant,  # an imported variant's rows (models.<m>.imports)
        heldout=paths.layer_artifact(
            RESULTS, "{model}", "{layer}", "heldout_activations", "{shard}"
        ),
        tokens=paths.tokens_file(RESULTS, "{model}"),
    output:
        evaluation=paths.evaluation_file(
            RESULTS, "{model}", "{layer}", "{variant}", "{shard}"
        ),
    log:
        f"{RESULTS}/logs/{{model}}/layer{{layer}}/evaluate/{{variant}}/{{shard}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{model}}/layer{{layer}}/evaluate/{{variant}}/{{shard}}.tsv"
    conda:
        "../../envs/circuit-insights.yaml"
    threads: config["evaluate"]["threads"]
    resources:
        mem_mb=lambda wildcards, attempt: 6000 * attempt,  # the subject model generating
        runtime=240,
        gpu=model_gpus,
        llm=1,
        cpus_per_task=lambda wildcards, threads: max(1, threads),  # threads may be 0
    params:
        model_name="{model}",
        model=subject_and_transcoder_params,
        evaluate=config_section("evaluate", EVALUATE_KEYS),
        llm=config_section("llm", LLM_MODEL_KEYS),
        llm_files=(paths.llm_state_file(RESULTS), paths.llm_cache_file(RESULTS)),
    script:
        "../../scripts/evaluate.py"
