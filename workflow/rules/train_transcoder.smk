# Transcoders for models that have none published: one per (model, layer), trained on its layer's
# MLP input -> output pairs of the caching set (rule collect_pairs, one forward for every layer).
# The model's own held-out next-token loss, which every layer's report compares the spliced loss
# with, comes from rule clean_loss (once per model).


rule train_transcoder:
    input:
        model=embedded_model_files,
        tokens=paths.tokens_file(RESULTS, "{model}"),
        pairs=paths.mlp_pairs_dir(RESULTS, "{model}"),
        clean_loss=paths.clean_loss_file(RESULTS, "{model}"),
    output:
        weights=paths.transcoder_files(RESULTS, "{model}", "{layer}")[0],
        config=paths.transcoder_files(RESULTS, "{model}", "{layer}")[1],
        report=paths.transcoder_report(RESULTS, "{model}", "{layer}"),
    log:
        f"{RESULTS}/logs/{{model}}/layer{{layer}}/train_transcoder.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{model}}/layer{{layer}}/train_transcoder.tsv"
    conda:
        "../../envs/circuit-insights.yaml"
    threads: config["threads"]
    resources:
        mem_mb=lambda wildcards, attempt: 6000 * attempt,  # model + this layer's MLP pairs
        runtime=120,
        gpu=model_gpus,
    params:
        model_name="{model}",
        model=training_params,
    script:
        "../../scripts/train_transcoder.py"
