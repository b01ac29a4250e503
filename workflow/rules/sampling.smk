# Per (model, layer, shard): quantile samples (CircuitLens), top-k contexts (MaxAct baseline) and
# random non-activating contexts (evaluation).


rule sample:
    input:
        maxima=f"{RESULTS}/{{model}}/layer{{layer}}/maxima/{{shard}}.parquet",
        tokens=f"{RESULTS}/{{model}}/corpus/tokens.parquet",
    output:
        samples=f"{RESULTS}/{{model}}/layer{{layer}}/samples/{{shard}}.parquet",
    params:
        sampling=config["sampling"],
    log:
        f"{RESULTS}/logs/{{model}}/layer{{layer}}/sample/{{shard}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{model}}/layer{{layer}}/sample/{{shard}}.tsv"
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "../../scripts/sample.py"
