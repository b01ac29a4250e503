# Text -> fixed-length token contexts (BOS first where the model uses one), split into a caching
# set and a held-out evaluation set.


rule corpus:
    input:
        model=embedded_model_files,
    output:
        tokens=paths.tokens_file(RESULTS, "{model}"),
    log:
        f"{RESULTS}/logs/{{model}}/corpus.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{model}}/corpus.tsv"
    conda:
        "../../envs/circuit-insights.yaml"
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        model=tokenizer_params,
        corpus=config_section("corpus"),
    script:
        "../../scripts/corpus.py"
