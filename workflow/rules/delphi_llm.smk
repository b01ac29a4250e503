# Per (model, layer, shard): delphi's detection and fuzzing and OpenAI's simulation score of the
# compared features' descriptions, rated by the LLM (rater = llm; docs/delphi_scores.md), on the
# examples delphi_rules scores exactly. The model's imported variants (models.<m>.imports, unless
# their evaluate is false) are rated beside ours.


rule delphi_llm:
    input:
        model=embedded_model_files,
        llm=llm_model_files,
        selection=paths.layer_artifact(
            RESULTS, "{model}", "{layer}", "features", "{shard}"
        ),
        explanations=paths.layer_artifact(
            RESULTS, "{model}", "{layer}", "explanations", "{shard}"
        ),
        imported=evaluated_imports_of,  # the model's imported variants (models.<m>.imports)
        heldout=paths.layer_artifact(
            RESULTS, "{model}", "{layer}", "heldout_activations", "{shard}"
        ),
        tokens=paths.tokens_file(RESULTS, "{model}"),
    output:
        scores=paths.delphi_scores_file(RESULTS, "{model}", "{layer}", "llm", "{shard}"),
    log:
        f"{RESULTS}/logs/{{model}}/layer{{layer}}/delphi_llm/{{shard}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{model}}/layer{{layer}}/delphi_llm/{{shard}}.tsv"
    conda:
        "../../envs/circuit-insights.yaml"
    resources:
        mem_mb=lambda wildcards, attempt: 2000 * attempt,
        runtime=120,
        llm=1,
    params:
        model=tokenizer_params,
        scores=config_section("scores"),
        evaluate=config_section("evaluate", ["features_per_shard", "seed", "variants"]),
        llm=config_section("llm", LLM_MODEL_KEYS),
        llm_files=(paths.llm_state_file(RESULTS), paths.llm_cache_file(RESULTS)),
    script:
        "../../scripts/delphi_llm.py"
