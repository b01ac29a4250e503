# One table per layer: what later layers' WeightLens jobs read as their upstream results.
rule gather_weightlens:
    input:
        shards=layer_weightlens_shards,
    output:
        table=paths.layer_table(RESULTS, "{model}", "{layer}", "weightlens"),
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
