# Transcoders for models that have none published: one per (model, layer), trained on MLP
# input -> output pairs of the caching set. The model's own held-out next-token loss, which every
# layer's report compares the spliced loss with, is computed once per model (rule clean_loss).


rule clean_loss:
    input:
        model=embedded_model_files,
        tokens=f"{RESULTS}/{{model}}/corpus/tokens.parquet",
    output:
        loss=f"{RESULTS}/{{model}}/corpus/clean_loss.json",
    log:
        f"{RESULTS}/logs/{{model}}/clean_loss.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{model}}/clean_loss.tsv"
    conda:
        "../../envs/circuit-insights.yaml"
    threads: config["threads"]
    resources:
        mem_mb=lambda wildcards, attempt: 4000 * attempt,  # model + one batch of logits
        runtime=60,
        gpu=model_gpus,
    params:
        model_name="{model}",
        model=model_config,
    script:
        "../../scripts/clean_loss.py"


rule train_transcoder:
    input:
        model=embedded_model_files,
        tokens=f"{RESULTS}/{{model}}/corpus/tokens.parquet",
        clean_loss=f"{RESULTS}/{{model}}/corpus/clean_loss.json",
    output:
        weights=f"{RESULTS}/{{model}}/layer{{layer}}/transcoder/transcoder.safetensors",
        config=f"{RESULTS}/{{model}}/layer{{layer}}/transcoder/config.json",
        report=f"{RESULTS}/{{model}}/layer{{layer}}/transcoder/report.json",
    log:
        f"{RESULTS}/logs/{{model}}/layer{{layer}}/train_transcoder.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{model}}/layer{{layer}}/train_transcoder.tsv"
    conda:
        "../../envs/circuit-insights.yaml"
    threads: config["threads"]
    resources:
        mem_mb=lambda wildcards, attempt: 6000 * attempt,  # model + MLP pairs of train_contexts
        runtime=120,
        gpu=model_gpus,
    params:
        model_name="{model}",
        model=model_config,
    script:
        "../../scripts/train_transcoder.py"
