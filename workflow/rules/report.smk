# The static HTML report of the whole run.


rule report:
    input:
        summaries=expand(
            paths.summary_file(RESULTS, "{model}", "summary.parquet"),
            model=config["models"],
        ),
        models=all_embedded_model_files,
        tables=report_files,
        tokens=expand(paths.tokens_file(RESULTS, "{model}"), model=config["models"]),
        graphs=report_graph_files,
    output:
        index=paths.report_index(RESULTS),
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
        graphs=report_graphs,
        labels=report_label_variants,
    script:
        "../../scripts/report.py"
