# Config validation, wildcard constraints and every input function of the workflow.
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from circuit_insights.pipeline.config import gpus_for_device  # noqa: E402
from circuit_insights.pipeline.preflight import start_checks  # noqa: E402
from circuit_insights.data.shards import SHARD_NAME_REGEX, make_shards  # noqa: E402
from circuit_insights.data import cache_chunks  # noqa: E402
from circuit_insights.pipeline import paths  # noqa: E402
from circuit_insights.pipeline import params as rule_params  # noqa: E402
from circuit_insights.pipeline import interop as rule_interop  # noqa: E402
from circuit_insights.pipeline.params import (  # noqa: E402
    DELPHI_RULE_KEYS,
    EVALUATE_KEYS,
    EVALUATE_RULES_KEYS,
    EXPLAIN_KEYS,
    LLM_EXPLAIN_KEYS,
    LLM_MODEL_KEYS,
    RULES_DERIVATION_KEYS,
    SELECTION_KEYS,
)
from circuit_insights.llm.server import stop_shared_server  # noqa: E402

# Validation and the preflight (models, transcoders, corpus, folders, llm.url, the LLM server's
# Python, GPUs), before any job runs: bad input ends Snakemake here with one message naming the
# key and the thing at fault. --config values come as strings where nested: typed by the schema.
config.update(
    start_checks(
        config,
        Path(workflow.basedir) / "workflow/schemas/config.schema.yaml",
        argv=sys.argv,
        main_process=workflow.is_main_process,
        command_line=workflow.config_settings.config,
        workflow_dir=workflow.basedir,
    )
)
RESULTS = config["results_dir"]
RESOURCES = config["resources_dir"]


wildcard_constraints:
    model=r"[A-Za-z0-9_.\-]+",
    layer=r"\d+",
    shard=SHARD_NAME_REGEX,  # f000000-000512; seven digits and more past a million
    chunk=cache_chunks.CHUNK_NAME_REGEX,  # c000000-016384: a range of context ids
    variant=r"[a-z_]+",


def model_config(wildcards):
    """The validated config block of the {model} wildcard."""
    return config["models"][wildcards.model]


# --- params: only the keys a rule reads, canonical (key order does not matter) -------------------


def tokenizer_params(wildcards):
    """{model}'s keys that loading its tokenizer reads."""
    return rule_params.tokenizer_params(config, wildcards.model)


def subject_params(wildcards):
    """{model}'s keys that loading the subject model reads."""
    return rule_params.subject_params(config, wildcards.model)


def subject_and_transcoder_params(wildcards):
    """{model}'s keys that loading the subject model and its transcoders reads."""
    return rule_params.subject_params(config, wildcards.model, transcoders="load")


def pairs_params(wildcards):
    """{model}'s keys that collecting the MLP pairs of its trained transcoders reads."""
    return rule_params.subject_params(config, wildcards.model, transcoders="pairs")


def training_params(wildcards):
    """{model}'s keys that training a transcoder reads."""
    return rule_params.subject_params(config, wildcards.model, transcoders="train")


def weightlens_model_params(wildcards):
    """{model}'s keys that a WeightLens job reads (subject, transcoders, thresholds)."""
    return rule_params.weightlens_model_params(config, wildcards.model)


def config_section(name, keys=None):
    """The config block ``name`` (only ``keys`` of it when given), canonical, at parse time."""
    return rule_params.section(config, name, keys)


def attribution_selection(wildcards):
    """The shard's feature selection, unless attribution.all_features attributes every feature."""
    if config["attribution"]["all_features"]:
        return {}
    return {
        "selection": paths.layer_artifact(
            RESULTS, wildcards.model, wildcards.layer, "features", wildcards.shard
        )
    }


NAMED_FEATURES = {
    model: rule_interop.named_features(config, model) for model in config["models"]
}
"""Per model, the features its config names (models.<m>.features and the feature nodes of
models.<m>.graph), per layer: read once at parse time (checked at start)."""


def shard_named_features(wildcards):
    """The named features of {model} in {layer}'s {shard}: rule select_features's params, so an
    edit of the list reruns only the shards whose named features change."""
    return rule_interop.shard_named_features(
        NAMED_FEATURES[wildcards.model], wildcards.layer, wildcards.shard
    )


def evaluated_variants(model):
    """The variants FADE scores for ``model``: evaluate.variants and the model's imported
    variants (models.<m>.imports, unless their evaluate is false)."""
    return [
        *config["evaluate"]["variants"],
        *rule_interop.evaluated_imports(config, model),
    ]


def import_source(wildcards):
    """The file or folder of imported variant {variant} of {model}."""
    return rule_interop.imports(config, wildcards.model)[wildcards.variant]["path"]


def import_params(wildcards):
    """The keys of models.{model}.imports.{variant} that reading it uses (not evaluate)."""
    block = rule_interop.imports(config, wildcards.model)[wildcards.variant]
    return rule_params.pick(
        block,
        ("explainer_model", "format", "method", "path"),
        f"models.{wildcards.model}.imports.{wildcards.variant}",
    )


def interop_target_params(wildcards):
    """How other tools name {model} and its transcoders (models.<m>.interop, layers, width)."""
    return rule_params.canonical(rule_interop.target_params(config, wildcards.model))


def imported_of_variant(wildcards):
    """The rows of {variant} when it is an imported variant of {model} (rule evaluate)."""
    if wildcards.variant not in rule_interop.imports(config, wildcards.model):
        return []
    return paths.imported_file(RESULTS, wildcards.model, wildcards.variant)


def evaluated_imports_of(wildcards):
    """The rows of every imported variant of {model} that is scored (rule delphi_llm)."""
    return [
        paths.imported_file(RESULTS, wildcards.model, name)
        for name in rule_interop.evaluated_imports(config, wildcards.model)
    ]


def imported_files_of(model):
    """The rows of every imported variant of ``model``."""
    return [
        paths.imported_file(RESULTS, model, name)
        for name in rule_interop.imports(config, model)
    ]


def graph_file(wildcards):
    """models.{model}.graph: the attribution graph rule label_graph labels."""
    return rule_interop.graph_path(config, wildcards.model)


def graph_explanation_files(wildcards):
    """The explanations of the shards that hold a feature node of {model}'s graph, and the
    rows of its imported variants named in labels.variants."""
    files = []
    graph = rule_interop.graph_features_of(config, wildcards.model)
    for layer, features in graph.items():
        for name in shard_names(wildcards.model):
            if rule_interop.shard_named_features({layer: features}, layer, name):
                files.append(
                    paths.layer_artifact(
                        RESULTS, wildcards.model, layer, "explanations", name
                    )
                )
    labels = set(rule_interop.label_variants(config, wildcards.model))
    return files + [
        paths.imported_file(RESULTS, wildcards.model, name)
        for name in rule_interop.imports(config, wildcards.model)
        if name in labels
    ]


def graph_label_params(wildcards):
    """labels.variants for {model}: its fallback order of label variants."""
    return rule_interop.label_variants(config, wildcards.model)


def our_explanation_files(wildcards):
    """Every explanations table of {model} (layers x shards), not the imported rows."""
    return [
        paths.layer_artifact(RESULTS, wildcards.model, layer, "explanations", name)
        for layer in model_config(wildcards)["layers"]
        for name in shard_names(wildcards.model)
    ]


def model_gpus(wildcards):
    """Resource gpu of a job running {model}: 1 on a cuda device, else 0 (profiles cap it)."""
    return gpus_of(wildcards.model)


def gpus_of(model):
    """model_gpus for a model named at parse time."""
    return gpus_for_device(config["models"][model]["device"])


def embedded_model_files(wildcards):
    """The embedded model's files when the model is built from a registry package, else nothing."""
    return embedded_model_files_of(wildcards.model)


def shard_names(model):
    """Shard file stems of one model's layers (the feature count is known from config)."""
    n_features = config["models"][model]["transcoders"]["n_features"]
    return [
        shard.name for shard in make_shards(n_features, config["cache"]["shard_size"])
    ]


def cache_chunk_dirs(wildcards):
    """Rule cache's folder of every corpus chunk of {model}: corpus.max_contexts context ids in
    chunks of cache.chunk_contexts (known before the corpus is tokenised)."""
    chunks = cache_chunks.make_chunks(
        config["corpus"]["max_contexts"], config["cache"]["chunk_contexts"]
    )
    return [
        paths.cache_chunk_dir(RESULTS, wildcards.model, chunk.name) for chunk in chunks
    ]


def cache_mem_mb(wildcards, attempt):
    """Memory of a cache job: the model, each layer's streaming statistics (~6 KB per feature:
    the log histogram and the exact sums) and, on the CPU, each layer's transcoder weights
    (~20 KB per feature up to d_model 2560); doubled on the retry."""
    block = model_config(wildcards)
    per_feature_kb = 6 if gpus_of(wildcards.model) else 26
    features = len(block["layers"]) * block["transcoders"]["n_features"]
    return attempt * (6000 + features * per_feature_kb // 1000)


def pairs_mem_mb(wildcards, attempt):
    """Memory of a collect_pairs job: the model and every trained layer's pairs (two float32
    vectors per token of the training and held-out contexts, d_model taken as up to 1024);
    doubled on the retry."""
    block = model_config(wildcards)
    corpus = config["corpus"]
    contexts = block["transcoders"]["train_contexts"] + math.ceil(
        corpus["max_contexts"] * corpus["eval_fraction"]
    )
    pair_bytes = 2 * 4 * 1024 * contexts * corpus["context_length"]
    return attempt * (4000 + len(block["layers"]) * pair_bytes // 1_000_000)


def embedded_model_files_of(model):
    """embedded_model_files for a model named at parse time."""
    source = config["models"][model]["source"]
    if not paths.is_embedded(source):
        return []
    return f"{paths.embedded_folder(RESOURCES, source)}/model.safetensors"


def transcoder_files_of(model):
    """transcoder_files for a model named at parse time (a {layer} wildcard stays)."""
    if config["models"][model]["transcoders"]["kind"] != "train":
        return []
    return paths.transcoder_files(RESULTS, model, "{layer}")


def earlier_layers(wildcards):
    """The configured layers of {model} up to and including {layer}, in order."""
    layer = int(wildcards.layer)
    return [up for up in sorted(model_config(wildcards)["layers"]) if up <= layer]


def weightlens_inputs(wildcards):
    """Transcoders of {layer} and every earlier configured layer, and the earlier layers'
    WeightLens results (one gathered table per layer, not every shard file: the DAG stays
    linear in shards): named transcoder_{L} and upstream_{L} for unpack().
    """
    inputs = {}
    for up in earlier_layers(wildcards):
        if model_config(wildcards)["transcoders"]["kind"] == "train":
            inputs[f"transcoder_{up}"] = paths.transcoder_files(
                RESULTS, wildcards.model, up
            )
        if up < int(wildcards.layer):
            inputs[f"upstream_{up}"] = paths.layer_table(
                RESULTS, wildcards.model, up, "weightlens"
            )
    return inputs


def twera_inputs(wildcards):
    """Transcoders of {layer} and every earlier configured layer (transcoder_{L}), the cache's
    activations of {shard} at {layer} and of every shard of each earlier layer
    (activations_{L}), for unpack()."""
    inputs = {}
    for up in earlier_layers(wildcards):
        if model_config(wildcards)["transcoders"]["kind"] == "train":
            inputs[f"transcoder_{up}"] = paths.transcoder_files(
                RESULTS, wildcards.model, up
            )
        names = (
            [wildcards.shard]
            if up == int(wildcards.layer)
            else shard_names(wildcards.model)
        )
        inputs[f"activations_{up}"] = [
            paths.layer_artifact(RESULTS, wildcards.model, up, "activations", name)
            for name in names
        ]
    return inputs


def twera_layers(model):
    """The configured layers of ``model`` that get a twera job: none unless twera.enabled,
    else every layer with an earlier configured layer."""
    if not config["twera"]["enabled"]:
        return []
    return sorted(config["models"][model]["layers"])[1:]


def layer_weightlens_shards(wildcards):
    """The WeightLens shard files of {model} {layer}."""
    return [
        paths.layer_artifact(
            RESULTS, wildcards.model, wildcards.layer, "weightlens", name
        )
        for name in shard_names(wildcards.model)
    ]


def all_layer_transcoders(wildcards):
    """Trained transcoder files of every configured layer of {model}, named transcoder_{L}."""
    if model_config(wildcards)["transcoders"]["kind"] != "train":
        return {}
    return {
        f"transcoder_{layer}": paths.transcoder_files(RESULTS, wildcards.model, layer)
        for layer in model_config(wildcards)["layers"]
    }


def configured_layers(wildcards):
    """Every configured layer of {model}, in order."""
    return sorted(model_config(wildcards)["layers"])


def llm_model_files(wildcards):
    """The embedded LLM's weights when the run starts its own server on it, else nothing."""
    source = config["llm"]["model"]
    if config["llm"]["url"] or not paths.is_embedded(source):
        return []
    return f"{paths.embedded_folder(RESOURCES, source)}/model.safetensors"


def layer_transcoder_files(wildcards):
    """The trained transcoder files of {layer}; nothing for pretrained ones."""
    if model_config(wildcards)["transcoders"]["kind"] != "train":
        return []
    return paths.transcoder_files(RESULTS, wildcards.model, wildcards.layer)


def evaluation_files(wildcards):
    """Every FADE evaluation file of {model}: layers x variants (imported ones too) x shards."""
    return [
        paths.evaluation_file(RESULTS, wildcards.model, layer, variant, name)
        for layer in model_config(wildcards)["layers"]
        for variant in evaluated_variants(wildcards.model)
        for name in shard_names(wildcards.model)
    ]


def rule_evaluation_files(wildcards):
    """Every rule-rated evaluation file of {model}: layers x shards (none when rules.variants
    is empty)."""
    if not config["rules"]["variants"]:
        return []
    return [
        paths.rule_evaluation_file(RESULTS, wildcards.model, layer, name)
        for layer in model_config(wildcards)["layers"]
        for name in shard_names(wildcards.model)
    ]


def delphi_raters():
    """The raters of the delphi scores: rule (rules.variants given), llm (scores.variants, or
    evaluate.variants when null, non-empty)."""
    raters = ["rule"] if config["rules"]["variants"] else []
    variants = config["scores"]["variants"]
    if variants is None:
        variants = config["evaluate"]["variants"]
    return raters + (["llm"] if variants else [])


def delphi_score_files(wildcards):
    """Every delphi-scores file of {model}: raters x layers x shards."""
    return [
        paths.delphi_scores_file(RESULTS, wildcards.model, layer, rater, name)
        for rater in delphi_raters()
        for layer in model_config(wildcards)["layers"]
        for name in shard_names(wildcards.model)
    ]


def explanation_files(wildcards):
    """Every explanations table of {model}: layers x shards (the summary counts LLM requests),
    and the rows of its imported variants (the summary marks them with their source)."""
    return [
        paths.layer_artifact(RESULTS, wildcards.model, layer, "explanations", name)
        for layer in model_config(wildcards)["layers"]
        for name in shard_names(wildcards.model)
    ] + imported_files_of(wildcards.model)


def cluster_files(wildcards):
    """Every circuit-cluster table of {model}: layers x shards."""
    return [
        paths.layer_artifact(RESULTS, wildcards.model, layer, "clusters", name)
        for layer in model_config(wildcards)["layers"]
        for name in shard_names(wildcards.model)
    ]


def weightlens_files(wildcards):
    """The gathered WeightLens table of every layer of {model}."""
    return [
        paths.layer_table(RESULTS, wildcards.model, layer, "weightlens")
        for layer in model_config(wildcards)["layers"]
    ]


def all_embedded_model_files(wildcards):
    """The embedded subject models' weights (their tokenizers label the report)."""
    return [
        file
        for model in config["models"]
        for file in [embedded_model_files_of(model)]
        if file
    ]


def report_files(wildcards):
    """Every per-shard table the report reads, of every model (its declared inputs)."""
    files = []
    for model, block in config["models"].items():
        for layer in block["layers"]:
            for name in shard_names(model):
                files += [
                    paths.layer_artifact(RESULTS, model, layer, stage, name)
                    for stage in paths.REPORT_STAGES
                ]
                files += [
                    paths.evaluation_file(RESULTS, model, layer, variant, name)
                    for variant in evaluated_variants(model)
                ]
                if config["rules"]["variants"]:
                    files.append(
                        paths.rule_evaluation_file(RESULTS, model, layer, name)
                    )
                files += [
                    paths.delphi_scores_file(RESULTS, model, layer, rater, name)
                    for rater in delphi_raters()
                ]
                if layer in twera_layers(model):
                    files.append(
                        paths.layer_artifact(RESULTS, model, layer, "twera", name)
                    )
        files += imported_files_of(model)
    return files


def report_graphs(wildcards):
    """Model -> its attribution graph (models.<m>.graph), for the models with one."""
    return rule_params.canonical(
        {
            model: rule_interop.graph_path(config, model)
            for model in config["models"]
            if rule_interop.graph_path(config, model)
        }
    )


def report_graph_files(wildcards):
    """The attribution graphs the report shows (declared, so that an edit reruns it)."""
    return sorted(set(report_graphs(wildcards).values()))


def report_label_variants(wildcards):
    """Model -> labels.variants for it (the graph page's labels), for the models with a graph."""
    return rule_params.canonical(
        {
            model: rule_interop.label_variants(config, model)
            for model in report_graphs(wildcards)
        }
    )


def model_locations(wildcards):
    """Model name -> where its tokenizer is (embedded folder or hub id / folder)."""
    return rule_params.canonical(
        {
            model: paths.model_location(RESOURCES, block["source"])
            for model, block in config["models"].items()
        }
    )


def llm_request_end_lines():
    """The run's last lines about its LLM requests (each model's summary llm_requests.parquet):
    the failures, or that none failed."""
    from circuit_insights.report.llm_requests import run_end_lines

    return run_end_lines(
        [
            (model, paths.summary_file(RESULTS, model, "llm_requests.parquet"))
            for model in config["models"]
        ]
    )


def all_targets():
    """Every per-shard output of every stage, each model's summary and the run's report.

    Per-shard files are targets too (not only the report), so that deleting one shard's output
    reruns exactly that shard's job (and the gathers after it).
    """
    targets = [paths.report_index(RESULTS)]
    for model, block in config["models"].items():
        targets.append(paths.summary_file(RESULTS, model, "metric_table.md"))
        if rule_interop.graph_path(config, model):
            targets.append(paths.graph_dir(RESULTS, model))
        if config["export"]["enabled"]:
            targets += [
                paths.export_file(RESULTS, model),
                paths.export_delphi_dir(RESULTS, model),
            ]
        for layer in block["layers"]:
            for name in shard_names(model):
                targets += [
                    paths.layer_artifact(RESULTS, model, layer, stage, name)
                    for stage in (
                        "samples",
                        "features",
                        "weightlens",
                        "contributions",
                        "clusters",
                        "explanations",
                    )
                ]
                targets += [
                    paths.evaluation_file(RESULTS, model, layer, variant, name)
                    for variant in evaluated_variants(model)
                ]
                if config["rules"]["variants"]:
                    targets.append(
                        paths.rule_evaluation_file(RESULTS, model, layer, name)
                    )
                targets += [
                    paths.delphi_scores_file(RESULTS, model, layer, rater, name)
                    for rater in delphi_raters()
                ]
                if layer in twera_layers(model):
                    targets.append(
                        paths.layer_artifact(RESULTS, model, layer, "twera", name)
                    )
            targets.append(paths.layer_table(RESULTS, model, layer, "weightlens"))
            if block["transcoders"]["kind"] == "train":
                targets.append(paths.transcoder_report(RESULTS, model, layer))
    return targets
