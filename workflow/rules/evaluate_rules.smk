# Per (model, layer, shard): the executable explanations (rules.variants) of every feature,
# scored by the rule rater (FADE's metrics with the rule in place of the LLM; docs/rules.md).
# The folder name has a hyphen so that the evaluate rule's {variant} never matches it.
rule evaluate_rules:
    input:
        model=embedded_model_files,
        transcoder=layer_transcoder_files,
        explanations=paths.layer_artifact(
            RESULTS, "{model}", "{layer}", "explanations", "{shard}"
        ),
        heldout=paths.layer_artifact(
            RESULTS, "{model}", "{layer}", "heldout_activations", "{shard}"
        ),
        tokens=paths.tokens_file(RESULTS, "{model}"),
    output:
        evaluation=paths.rule_evaluation_file(RESULTS, "{model}", "{layer}", "{shard}"),
    log:
        f"{RESULTS}/logs/{{model}}/layer{{layer}}/evaluate_rules/{{shard}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{model}}/layer{{layer}}/evaluate_rules/{{shard}}.tsv"
    conda:
        "../../envs/circuit-insights.yaml"
    threads: config["threads"]
    resources:
        mem_mb=lambda wildcards, attempt: 4000 * attempt,  # the subject model, forward passes only
        runtime=120,
        gpu=model_gpus,
    params:
        model_name="{model}",
        model=subject_and_transcoder_params,
        rules=config_section("rules"),
        evaluate=config_section("evaluate", EVALUATE_RULES_KEYS),
    script:
        "../../scripts/evaluate_rules.py"
