# circuit-insights: WeightLens and CircuitLens explanations of transcoder features.
# Run: snakemake --cores all (config/config.yaml, the embedded default) or --configfile another.


import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from circuit_insights.pipeline.config import holds_no_setting  # noqa: E402

DEFAULT_CONFIG = "config/config.yaml"

# The embedded default, unless the command line names config files of its own (then those
# alone, with the schema's defaults, so a preset does not also run the embedded model). An
# emptied config/config.yaml means every default (Snakemake's configfile refuses an empty file).
if not workflow.config_settings.configfiles and not holds_no_setting(DEFAULT_CONFIG):

    configfile: DEFAULT_CONFIG


include: "workflow/rules/common.smk"
include: "workflow/rules/build_embedded_model.smk"
include: "workflow/rules/build_embedded_llm.smk"
include: "workflow/rules/corpus.smk"
include: "workflow/rules/clean_loss.smk"
include: "workflow/rules/collect_pairs.smk"
include: "workflow/rules/train_transcoder.smk"
include: "workflow/rules/cache.smk"
include: "workflow/rules/merge_cache.smk"
include: "workflow/rules/sample.smk"
include: "workflow/rules/select_features.smk"
include: "workflow/rules/weightlens.smk"
include: "workflow/rules/gather_weightlens.smk"
include: "workflow/rules/twera.smk"
include: "workflow/rules/attribution.smk"
include: "workflow/rules/cluster.smk"
include: "workflow/rules/explain.smk"
include: "workflow/rules/import_explanations.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/evaluate_rules.smk"
include: "workflow/rules/delphi_rules.smk"
include: "workflow/rules/delphi_llm.smk"
include: "workflow/rules/summarize.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/label_graph.smk"
include: "workflow/rules/export.smk"


rule all:
    default_target: True
    input:
        all_targets(),


onsuccess:
    stop_shared_server(paths.llm_state_file(RESULTS))
    for line in llm_request_end_lines():
        print(line, file=sys.stderr)


onerror:
    stop_shared_server(paths.llm_state_file(RESULTS))
