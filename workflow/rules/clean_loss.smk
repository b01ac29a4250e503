# The model's own next-token loss on the held-out split, once per model: every trained
# transcoder's report compares its spliced loss with it (rule train_transcoder).


rule clean_loss:
    input:
        model=embedded_model_files,
        tokens=paths.tokens_file(RESULTS, "{model}"),
    output:
        loss=paths.clean_loss_file(RESULTS, "{model}"),
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
        model=subject_params,
    script:
        "../../scripts/clean_loss.py"
