# Per (model, layer, shard): delphi's detection and fuzzing and OpenAI's simulation score of
# every feature's executable rules, computed exactly (rater = rule, no LLM; docs/delphi_scores.md),
# on the examples delphi_llm's LLM sees.


rule delphi_rules:
    input:
        model=embedded_model_files,
        explanations=paths.layer_artifact(
            RESULTS, "{model}", "{layer}", "explanations", "{shard}"
        ),
        heldout=paths.layer_artifact(
            RESULTS, "{model}", "{layer}", "heldout_activations", "{shard}"
        ),
        tokens=paths.tokens_file(RESULTS, "{model}"),
    output:
        scores=paths.delphi_scores_file(
            RESULTS, "{model}", "{layer}", "rule", "{shard}"
        ),
    log:
        f"{RESULTS}/logs/{{model}}/layer{{layer}}/delphi_rules/{{shard}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{model}}/layer{{layer}}/delphi_rules/{{shard}}.tsv"
    conda:
        "../../envs/circuit-insights.yaml"
    resources:
        mem_mb=lambda wildcards, attempt: 2000 * attempt,  # held-out activations and tokens
        runtime=30,
    params:
        model=tokenizer_params,
        rules=config_section("rules", ["variants"]),  # which rule variants it scores
        scores=config_section("scores", DELPHI_RULE_KEYS),
        evaluate=config_section("evaluate", ["seed"]),
    script:
        "../../scripts/delphi_rules.py"
