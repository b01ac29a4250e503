# Per (model, layer, shard): descriptions of the chosen features by every explanation variant,
# written by the LLM (a vLLM server the first job starts and the run stops, or a configured URL).


rule explain:
    input:
        model=embedded_model_files,
        llm=llm_model_files,
        selection=paths.layer_artifact(
            RESULTS, "{model}", "{layer}", "features", "{shard}"
        ),
        weightlens=paths.layer_artifact(
            RESULTS, "{model}", "{layer}", "weightlens", "{shard}"
        ),
        clusters=paths.layer_artifact(
            RESULTS, "{model}", "{layer}", "clusters", "{shard}"
        ),
        samples=paths.layer_artifact(
            RESULTS, "{model}", "{layer}", "samples", "{shard}"
        ),
        tokens=paths.tokens_file(RESULTS, "{model}"),
    output:
        explanations=paths.layer_artifact(
            RESULTS, "{model}", "{layer}", "explanations", "{shard}"
        ),
    log:
        f"{RESULTS}/logs/{{model}}/layer{{layer}}/explain/{{shard}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{model}}/layer{{layer}}/explain/{{shard}}.tsv"
    conda:
        "../../envs/circuit-insights.yaml"
    resources:
        mem_mb=2000,  # the job itself; the shared vLLM server holds ~4.5 GB more
        runtime=240,
        llm=1,  # jobs that talk to the LLM: cap with --resources llm=N
    params:
        model=tokenizer_params,
        explain=config_section("explain", EXPLAIN_KEYS),
        llm=config_section("llm", LLM_EXPLAIN_KEYS),
        rules=config_section("rules", RULES_DERIVATION_KEYS),
        llm_files=(paths.llm_state_file(RESULTS), paths.llm_cache_file(RESULTS)),
    script:
        "../../scripts/explain.py"
