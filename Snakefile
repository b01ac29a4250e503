# circuit-insights: WeightLens and CircuitLens explanations of transcoder features.
# Run: snakemake --cores all (config/config.yaml, the embedded default) or --configfile another.


# The embedded default, unless the command line names config files of its own (then those
# alone, with the schema's defaults, so a preset does not also run the embedded model).
if not workflow.config_settings.configfiles:

    configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/corpus.smk"
include: "workflow/rules/transcoders.smk"
include: "workflow/rules/activations.smk"
include: "workflow/rules/sampling.smk"
include: "workflow/rules/weightlens.smk"
include: "workflow/rules/attribution.smk"
include: "workflow/rules/clustering.smk"
include: "workflow/rules/explain.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        all_targets(),


onsuccess:
    stop_shared_server(paths.llm_state_file(RESULTS))


onerror:
    stop_shared_server(paths.llm_state_file(RESULTS))
