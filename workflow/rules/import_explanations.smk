# Per (model, imported variant): explanations written elsewhere (models.<m>.imports.<name>: a
# Neuronpedia export, a delphi run) as rows of a variant of their own, one per feature of every
# configured layer (docs/formats.md); FADE scores them like the LLM variants (rule evaluate).


rule import_explanations:
    input:
        source=import_source,
    output:
        explanations=paths.imported_file(RESULTS, "{model}", "{variant}"),
    log:
        f"{RESULTS}/logs/{{model}}/import_explanations/{{variant}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{model}}/import_explanations/{{variant}}.tsv"
    conda:
        "../../envs/circuit-insights.yaml"
    resources:
        mem_mb=lambda wildcards, attempt: 2000 * attempt,
        runtime=30,
    params:
        imported=import_params,
        target=interop_target_params,
    script:
        "../../scripts/import_explanations.py"
