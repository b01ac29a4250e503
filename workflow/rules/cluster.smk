# Per (model, layer, shard): each feature's samples clustered by their circuits (Jaccard distance
# of contribution sets, density clustering), with trigger patterns and output influence per cluster.


rule cluster:
    input:
        model=embedded_model_files,
        contributions=paths.layer_artifact(
            RESULTS, "{model}", "{layer}", "contributions", "{shard}"
        ),
        totals=paths.layer_artifact(
            RESULTS, "{model}", "{layer}", "attribution_totals", "{shard}"
        ),
        weightlens=paths.layer_artifact(
            RESULTS, "{model}", "{layer}", "weightlens", "{shard}"
        ),
    output:
        clusters=paths.layer_artifact(
            RESULTS, "{model}", "{layer}", "clusters", "{shard}"
        ),
        assignments=paths.layer_artifact(
            RESULTS, "{model}", "{layer}", "cluster_assignments", "{shard}"
        ),
    log:
        f"{RESULTS}/logs/{{model}}/layer{{layer}}/cluster/{{shard}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{model}}/layer{{layer}}/cluster/{{shard}}.tsv"
    conda:
        "../../envs/circuit-insights.yaml"
    resources:
        mem_mb=3000,
        runtime=20,
    params:
        model=tokenizer_params,
        clustering=config_section("clustering"),
        attribution=config_section("attribution", ["threshold"]),
    script:
        "../../scripts/cluster.py"
