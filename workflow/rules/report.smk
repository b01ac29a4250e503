# The static HTML report of the whole run.


rule report:
    input:
        summaries=expand(
            f"{RESULTS}/{{model}}/summary/summary.parquet", model=config["models"]
        ),
        models=all_embedded_model_files,
    output:
        index=f"{RESULTS}/report/index.html",
    log:
        f"{RESULTS}/logs/report.log",
    benchmark:
        f"{RESULTS}/benchmarks/report.tsv"
    conda:
        "../../envs/circuit-insights.yaml"
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        locations=model_locations,
        max_features=config["report"]["max_features"],
    script:
        "../../scripts/report.py"
