# Text -> fixed-length token contexts (BOS first where the model uses one), split into a caching
# set and a held-out evaluation set.


rule corpus:
    input:
        model=embedded_model_files,
    output:
        tokens=f"{RESULTS}/{{model}}/corpus/tokens.parquet",
    params:
        model=model_config,
        corpus=config["corpus"],
        resources=RESOURCES,
    log:
        f"{RESULTS}/logs/{{model}}/corpus.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{model}}/corpus.tsv"
    resources:
        mem_mb=4000,
        runtime=30,
    script:
        "../../scripts/corpus.py"
