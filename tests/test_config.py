"""Config validation: defaults filled in, one message naming the key at fault."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from circuit_insights.core.errors import InputError
from circuit_insights.pipeline.config import (
    coerce_command_line,
    holds_no_setting,
    load_config,
    load_schema,
    max_caching_contexts,
    validate_config,
)
from circuit_insights.pipeline.preflight import check_models

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = load_schema(ROOT / "workflow/schemas/config.schema.yaml")


def _keys_of(schema, prefix=""):
    """Every (dotted key, sub-schema) of the schema."""
    for key, sub in schema.get("properties", {}).items():
        yield prefix + key, sub
        yield from _keys_of(sub, prefix + key + ".")
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        yield from _keys_of(extra, prefix + "<name>.")


def test_every_key_has_a_default_and_a_description():
    for key, sub in _keys_of(SCHEMA):
        assert "description" in sub, key
        assert "default" in sub, key


def test_empty_config_gets_every_default():
    config = validate_config({}, SCHEMA)
    assert config["models"]["gemma-3-270m"]["layers"] == [3, 8, 13]
    assert config["sampling"] == {
        "n_bins": 20,
        "alpha": 0.9,
        "n_samples": 100,
        "top_k": 20,
        "n_negatives": 20,
        "seed": 0,
    }
    assert config["corpus"]["source"] == "gensim"


def test_a_model_block_gets_its_defaults():
    config = validate_config({"models": {"gpt2": {"source": "openai-community/gpt2"}}}, SCHEMA)
    block = config["models"]["gpt2"]
    assert block["transcoders"]["kind"] == "train"
    assert block["dtype"] == "float32"
    assert (block["transcoders"]["input_hook"], block["transcoders"]["output_hook"]) == (
        "mlp_in",
        "mlp_out",
    )


def test_pretrained_hooks_stay_unset_so_the_file_decides():
    block = {"source": "gpt2", "transcoders": {"kind": "pretrained", "path": "tc{layer}.pt"}}
    transcoders = validate_config({"models": {"gpt2": block}}, SCHEMA)["models"]["gpt2"][
        "transcoders"
    ]
    assert transcoders["input_hook"] is None and transcoders["output_hook"] is None


@pytest.mark.parametrize("path", sorted((ROOT / "config").glob("*.yaml")))
def test_shipped_configs_are_valid(path):
    load_config(path, ROOT / "workflow/schemas/config.schema.yaml")


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"cache": {"shard_size": 0}}, "'cache.shard_size': 0 is less than the minimum of 1"),
        ({"cache": {"shard_sise": 10}}, "config key 'cache.shard_sise' is not known"),
        ({"sampling": {"alpha": "high"}}, "'sampling.alpha': 'high' is not of type 'number'"),
        ({"models": {"m": {"layers": [-1]}}}, "'models.m.layers.0'"),
        ({"models": {"m": {"dtype": "int8"}}}, "'models.m.dtype'"),
        ({"corpus": {"source": "files"}}, "'corpus.paths' must list files"),
        (
            {"corpus": {"source": "files", "paths": ["/no/such/corpus.txt"]}},
            "corpus file /no/such/corpus.txt does not exist",
        ),
        (
            {"models": {"m": {"transcoders": {"kind": "pretrained"}}}},
            "'models.m.transcoders.path' must be set",
        ),
        ({"models": {}}, "'models'"),
        ({"models": {"m/x": {}}}, "'models.m/x'"),
        ({"models": {"m": {"device": "tpu9"}}}, "'models.m.device': unknown torch device 'tpu9'"),
        ({"models": {"m": {"device": "cuda:x"}}}, "'models.m.device'"),
        (
            {"models": {"m": {"transcoders": {"n_features": 10**9}}}},
            "'models.m.transcoders.n_features': 1000000000 features in shards of 512 "
            "(cache.shard_size) make 1953125 shards per layer, more than the 20000",
        ),
        (
            {"models": {"m": {"transcoders": {"train_contexts": 2701}}}},
            "'models.m.transcoders.train_contexts': 2701 contexts, but the caching set holds "
            "at most 2700",
        ),
    ],
)
def test_bad_config_names_the_key(config, message):
    with pytest.raises(InputError) as error:
        validate_config(config, SCHEMA)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_devices_widths_and_corpus_folders_that_are_fine_pass(tmp_path):
    for device in ("cpu", "cuda", "cuda:1", "mps"):
        _with_model(device=device)
    _with_model(transcoders={"n_features": 1_048_576})  # a published 1M width: 2048 shards
    _with_model(transcoders={"kind": "pretrained", "path": "x", "train_contexts": 10**6})
    corpus = {"source": "files", "paths": [str(tmp_path)]}  # a folder stands for its files
    assert validate_config({"corpus": corpus}, SCHEMA)["corpus"]["paths"] == [str(tmp_path)]


def test_max_caching_contexts_is_what_the_corpus_split_leaves():
    from circuit_insights.data.corpus import split_contexts

    for n, fraction in [(240, 0.2), (3000, 0.1), (2, 0.5), (7, 0.01), (101, 0.99)]:
        cache, _ = split_contexts(n, fraction, 0)
        assert max_caching_contexts({"max_contexts": n, "eval_fraction": fraction}) == len(cache)


def test_command_line_strings_are_typed_by_the_schema():
    """--config 'cache={"shard_size": 128}': Snakemake's BaseLoader leaves every nested scalar a
    string; where the schema wants another type and the string reads as one, it becomes one."""
    given = {
        "cache": {"shard_size": "128", "exclude_bos": "false"},
        "preflight": {"network": "False"},
        "sampling": {"alpha": "0.5", "n_bins": "many"},
        "models": {"m": {"layers": ["3", "8"], "prepend_bos": "null", "source": "123"}},
        "evaluate": {"features_per_shard": "~"},
        "llm": {"url": "null"},
    }
    config = {**given, "threads": 2, "unknown": {"x": "1"}}
    typed = coerce_command_line(config, given, SCHEMA)
    assert typed["cache"] == {"shard_size": 128, "exclude_bos": False}
    assert typed["preflight"] == {"network": False}
    assert typed["sampling"] == {"alpha": 0.5, "n_bins": "many"}  # left for the validation
    assert typed["models"]["m"] == {"layers": [3, 8], "prepend_bos": None, "source": "123"}
    assert typed["evaluate"] == {"features_per_shard": None}
    assert typed["llm"] == {"url": "null"}  # a string key keeps its string
    assert typed["threads"] == 2 and typed["unknown"] == {"x": "1"}
    file_values = {"cache": {"shard_size": "128"}}  # from a config file: not touched
    assert coerce_command_line(file_values, {}, SCHEMA) == file_values


def test_an_empty_or_comment_only_config_file_holds_no_setting(tmp_path):
    path = tmp_path / "config.yaml"
    for text, empty in [("", True), ("# defaults\n\n", True), ("{}", False), ("a: [", False)]:
        path.write_text(text)
        assert holds_no_setting(path) is empty, text
    assert not holds_no_setting(tmp_path / "missing.yaml")  # Snakemake names it


def test_load_config_reads_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"cache": {"shard_size": 64}}))
    config = load_config(path, ROOT / "workflow/schemas/config.schema.yaml")
    assert config["cache"]["shard_size"] == 64


def _with_model(**block):
    return validate_config({"models": {"m": block}}, SCHEMA)


def test_layer_out_of_range_of_the_embedded_model_fails_at_start():
    config = _with_model(layers=[3, 18])
    with pytest.raises(InputError, match=r"'models.m.layers': layer 18 is out of range"):
        check_models(config, network=False)


def test_layer_out_of_range_of_a_local_model_fails_at_start(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llama", "num_hidden_layers": 2}')
    with pytest.raises(InputError, match=f"model folder {tmp_path} has no weights"):
        check_models(_with_model(source=str(tmp_path), layers=[1]), network=False)
    (tmp_path / "model.safetensors").write_bytes(b"")
    config = _with_model(source=str(tmp_path), layers=[2])
    with pytest.raises(InputError, match="layer 2 is out of range"):
        check_models(config, network=False)
    check_models(_with_model(source=str(tmp_path), layers=[1]), network=False)


@pytest.mark.parametrize("source", ["/no/such/model", "embedded:gpt-5", "not a model id"])
def test_unknown_model_fails_at_start(source):
    with pytest.raises(InputError, match=f"'models.m.source': unknown model {source!r}"):
        check_models(_with_model(source=source), network=False)


@pytest.mark.parametrize("source", ["openai-community/gpt2", "gpt2"])
def test_hub_ids_pass_the_offline_check(source):
    """Not in the (empty) hub cache: the layers are left to the preflight or the jobs."""
    check_models(_with_model(source=source, layers=[40]), network=False)


def test_a_config_error_ends_the_workflow_with_one_line_and_no_traceback(capsys):
    from circuit_insights.pipeline.preflight import start_checks

    with pytest.raises(SystemExit) as stop:
        start_checks({"cache": {"shard_size": 0}}, ROOT / "workflow/schemas/config.schema.yaml")
    assert stop.value.code == 1
    err = capsys.readouterr().err
    assert err.strip() == "Error: config key 'cache.shard_size': 0 is less than the minimum of 1"


def test_prompt_settings_are_the_explainers_own_fields_and_defaults():
    """explain.prompt in the schema and ExplainConfig agree key for key, default for default,
    and the embedded default's compact prompt settings reach the explainer."""
    from dataclasses import fields

    from circuit_insights.explain.config import ExplainConfig

    schema_defaults = validate_config({}, SCHEMA)["explain"]["prompt"]
    own = {item.name: item.default for item in fields(ExplainConfig)}
    assert schema_defaults == {key: own[key] for key in schema_defaults}
    shipped = load_config(ROOT / "config/config.yaml", ROOT / "workflow/schemas/config.schema.yaml")
    config = ExplainConfig(**shipped["explain"]["prompt"])
    assert (config.n_maxact, config.max_clusters) == (10, 2)
    with pytest.raises(InputError, match="explain.prompt.n_maxact"):
        validate_config({"explain": {"prompt": {"n_maxact": 0}}}, SCHEMA)


# --- narrow params: what each rule reads ----------------------------------------------------------


def _reordered(value):
    """``value`` with the keys of every mapping in reverse order."""
    if isinstance(value, dict):
        return {key: _reordered(value[key]) for key in reversed(list(value))}
    return value


def test_rule_params_do_not_depend_on_key_order():
    from circuit_insights.pipeline import params

    raw = yaml.safe_load((ROOT / "config/ci.yaml").read_text())
    config, reordered = validate_config(raw, SCHEMA), validate_config(_reordered(raw), SCHEMA)
    assert list(config["corpus"]) != list(reordered["corpus"])  # the orders really differ
    model = "gemma-3-270m"
    for build in (
        lambda c: params.subject_params(c, model, transcoders="train"),
        lambda c: params.weightlens_model_params(c, model),
        lambda c: params.section(c, "explain"),
        lambda c: params.section(c, "llm"),
    ):
        assert repr(build(config)) == repr(build(reordered))


def test_a_weightlens_threshold_reaches_only_weightlens_params():
    from circuit_insights.pipeline import params

    raw = yaml.safe_load((ROOT / "config/ci.yaml").read_text())
    before = validate_config(raw, SCHEMA)
    raw["models"]["gemma-3-270m"]["weightlens"] = {"t_tok": 7.5}
    after = validate_config(raw, SCHEMA)
    model = "gemma-3-270m"
    unchanged = (
        lambda c: params.tokenizer_params(c, model),
        lambda c: params.subject_params(c, model, transcoders="train"),
        lambda c: params.subject_params(c, model, transcoders="load"),
    )
    for build in unchanged:
        assert repr(build(before)) == repr(build(after))
    changed = params.weightlens_model_params(after, model)
    assert changed["weightlens"]["t_tok"] == 7.5
    assert repr(changed) != repr(params.weightlens_model_params(before, model))


def test_a_training_key_reaches_the_training_params_not_the_pairs_params():
    """Rule collect_pairs reads the hooks and train_contexts; an optimizer key reruns only
    training (rule train_transcoder keeps train_contexts: its pairs file is temporary)."""
    from circuit_insights.pipeline import params

    raw = yaml.safe_load((ROOT / "config/ci.yaml").read_text())
    model = "gemma-3-270m"
    before = validate_config(raw, SCHEMA)
    raw["models"][model]["transcoders"]["steps"] = 7
    after = validate_config(raw, SCHEMA)
    pairs = lambda c: params.subject_params(c, model, transcoders="pairs")  # noqa: E731
    train = lambda c: params.subject_params(c, model, transcoders="train")  # noqa: E731
    assert repr(pairs(before)) == repr(pairs(after))
    assert train(after)["transcoders"]["steps"] == 7
    assert set(pairs(after)["transcoders"]) == {"input_hook", "output_hook", "train_contexts"}
    raw["models"][model]["transcoders"]["train_contexts"] = 100
    fewer = validate_config(raw, SCHEMA)
    assert repr(pairs(fewer)) != repr(pairs(after)) and repr(train(fewer)) != repr(train(after))
    schema = SCHEMA["properties"]["models"]["additionalProperties"]["properties"]["transcoders"]
    read = set(params.TRANSCODER_LOAD_KEYS) | set(params.TRANSCODER_TRAIN_KEYS)
    assert read == set(schema["properties"]), "every transcoders key is read by some job"


def test_llm_keys_are_either_answer_params_or_connection_settings():
    """Every ``llm`` key is a rerun trigger of the LLM jobs (it changes what is answered) or a
    connection setting read from the config at run time, never both, never neither."""
    from circuit_insights.pipeline import params

    schema_keys = set(SCHEMA["properties"]["llm"]["properties"])
    answer = set(params.LLM_EXPLAIN_KEYS) | set(params.LLM_MODEL_KEYS)
    connection = set(params.LLM_CONNECTION_KEYS)
    assert answer | connection == schema_keys
    assert not answer & connection
    assert set(params.LLM_MODEL_KEYS) <= set(params.LLM_EXPLAIN_KEYS)


def test_llm_job_config_joins_the_params_with_the_connection_settings():
    from circuit_insights.pipeline import params

    raw = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    config = validate_config(raw, SCHEMA)
    explain = params.section(config, "llm", params.LLM_EXPLAIN_KEYS)
    assert "concurrency" not in explain and "reserved_cpus" not in explain
    job = params.llm_job_config(explain, config)
    assert job == params.section(config, "llm")  # the explain job sees the whole block
    raw["llm"]["concurrency"] = 3
    edited = validate_config(raw, SCHEMA)
    assert params.section(edited, "llm", params.LLM_EXPLAIN_KEYS) == explain
    assert params.llm_job_config(explain, edited)["concurrency"] == 3
    with pytest.raises(InputError, match="'llm'"):
        params.llm_job_config(explain, {})


def test_params_name_a_missing_model():
    from circuit_insights.pipeline import params

    config = validate_config({}, SCHEMA)
    with pytest.raises(InputError, match="models.gpt2"):
        params.tokenizer_params(config, "gpt2")


def test_config_sections_build_their_dataclasses_and_reject_unknown_keys():
    from circuit_insights.circuitlens.clustering import ClusteringConfig
    from circuit_insights.data.sampling import SamplingConfig
    from circuit_insights.explain.config import ExplainConfig

    config = validate_config({}, SCHEMA)
    assert SamplingConfig.from_mapping(config["sampling"]).n_samples == 100
    assert ClusteringConfig.from_mapping(config["clustering"]).rho == 0.05
    assert ExplainConfig.from_mapping(config["explain"]["prompt"]).n_maxact == 20
    with pytest.raises(InputError, match="sampling.n_sample"):
        SamplingConfig.from_mapping({"n_sample": 3})


def test_weightlens_section_builds_the_documented_default_options():
    """The schema's ``weightlens`` defaults are WeightLensOptions' own defaults, one way to build
    them (``from_mapping``), and an unknown key is named."""
    from circuit_insights.weightlens.config import WeightLensOptions

    config = validate_config({}, SCHEMA)
    assert WeightLensOptions.from_mapping(config["weightlens"]) == WeightLensOptions()
    bounded = WeightLensOptions.from_mapping({**config["weightlens"], "max_inherited_tokens": 8})
    assert bounded.max_inherited_tokens == 8
    with pytest.raises(InputError, match="weightlens.t_tok"):
        WeightLensOptions.from_mapping({"t_tok": 4.0})


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("explain", {"variants": ["maxact", "no_such"]}, "'explain.variants': 'no_such'"),
        ("evaluate", {"variants": ["bogus"]}, "'evaluate.variants': 'bogus'"),
        ("rules", {"variants": ["maxact"]}, "'rules.variants': 'maxact' is not a variant"),
    ],
)
def test_variant_names_are_checked_against_the_variant_table(key, value, message):
    with pytest.raises(InputError, match=message):
        validate_config({key: value}, SCHEMA)
