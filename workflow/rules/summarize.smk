# Gather: per-model summary (feature x variant x metric), tables in the paper's form with
# bootstrap confidence intervals, plots; and a static HTML report of the whole run.


rule summarize:
    input:
        evaluation=evaluation_files,
        weightlens=weightlens_files,
        rule_evaluation=rule_evaluation_files,
        delphi_scores=delphi_score_files,
        clusters=cluster_files,
        explanations=explanation_files,
    output:
        summary=paths.summary_file(RESULTS, "{model}", "summary.parquet"),
        table=paths.summary_file(RESULTS, "{model}", "metric_table.md"),
        shares=paths.summary_file(RESULTS, "{model}", "token_based_shares.md"),
    log:
        f"{RESULTS}/logs/{{model}}/summarize.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{model}}/summarize.tsv"
    conda:
        "../../envs/circuit-insights.yaml"
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        model_name="{model}",
        model=tokenizer_params,
    script:
        "../../scripts/summarize.py"
