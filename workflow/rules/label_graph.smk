# Per model with a graph (models.<m>.graph): a copy of the attribution graph whose feature nodes
# carry our labels (labels.variants, in fallback order), with the index circuit-tracer's local
# server reads: serve results_dir/{model}/graph (docs/formats.md).


rule label_graph:
    input:
        graph=graph_file,
        explanations=graph_explanation_files,
    output:
        folder=directory(paths.graph_dir(RESULTS, "{model}")),
    log:
        f"{RESULTS}/logs/{{model}}/label_graph.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{model}}/label_graph.tsv"
    conda:
        "../../envs/circuit-insights.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        labels=graph_label_params,
        target=interop_target_params,
    script:
        "../../scripts/label_graph.py"
