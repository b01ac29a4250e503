# Per (model, layer, shard): each feature's samples clustered by their circuits (Jaccard distance
# of contribution sets, density clustering), with trigger patterns and output influence per cluster.


rule cluster:
    input:
        model=embedded_model_files,
        contributions=f"{RESULTS}/{{model}}/layer{{layer}}/contributions/{{shard}}.parquet",
        totals=f"{RESULTS}/{{model}}/layer{{layer}}/attribution_totals/{{shard}}.parquet",
        weightlens=f"{RESULTS}/{{model}}/layer{{layer}}/weightlens/{{shard}}.parquet",
    output:
        clusters=f"{RESULTS}/{{model}}/layer{{layer}}/clusters/{{shard}}.parquet",
        assignments=f"{RESULTS}/{{model}}/layer{{layer}}/cluster_assignments/{{shard}}.parquet",
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
    script:
        "../../scripts/cluster.py"
