# Per model (export.enabled): every variant's descriptions with their scores, in Neuronpedia's
# explanation export and as delphi runs (docs/formats.md), so other tools read them.


rule export:
    input:
        explanations=our_explanation_files,
        summary=paths.summary_file(RESULTS, "{model}", "summary.parquet"),
    output:
        neuronpedia=paths.export_file(RESULTS, "{model}"),
        delphi=directory(paths.export_delphi_dir(RESULTS, "{model}")),
    log:
        f"{RESULTS}/logs/{{model}}/export.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{model}}/export.tsv"
    conda:
        "../../envs/circuit-insights.yaml"
    resources:
        mem_mb=lambda wildcards, attempt: 4000 * attempt,
        runtime=30,
    params:
        target=interop_target_params,
    script:
        "../../scripts/export.py"
