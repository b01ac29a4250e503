"""Imported explanations as variants (issue 22): explanations written elsewhere become rows of a
variant named by the config, with their source and explainer on every row, a row saying so where
the file has none, checked at start, and marked with their source in the summary."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from circuit_insights.core.errors import InputError
from circuit_insights.data.schemas import EXPLANATIONS_SCHEMA, FADE_EVALUATION_SCHEMA
from circuit_insights.explain.facts import FeatureInputs, ImportedText, MarkedContext
from circuit_insights.explain.imported import import_rows, imported_sources
from circuit_insights.explain.kinds import Imported
from circuit_insights.explain.run import explain_shard
from circuit_insights.explain.variants import TABLE, VARIANTS, imported_variant, with_imports
from circuit_insights.interop.target import TranscoderSet
from circuit_insights.pipeline.config import load_schema, validate_config
from circuit_insights.pipeline.interop import check_imports, read_import
from circuit_insights.report.summary import write_summary

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "interop"
SCHEMA = load_schema(ROOT / "workflow" / "schemas" / "config.schema.yaml")
GEMMA_2 = TranscoderSet(
    model="gemma-2-2b", source_set="gemmascope-transcoder-16k", layers=(18, 20), width=16384
)


def test_an_imported_variant_runs_through_explain_shard_with_its_provenance_on_every_row():
    variant = imported_variant("theirs", source="neuronpedia", path="export.json")
    assert isinstance(variant, Imported) and not variant.needs_llm and "theirs" not in TABLE
    text = ImportedText(
        description="capital cities",
        source="neuronpedia",
        explainer_model="gpt-4o-mini",
        source_id="18-gemmascope-transcoder-16k",
        method="oai_token-act-pair",
        n_explanations=2,
    )
    blank = ImportedText(description="  ", source="neuronpedia")
    inputs = {
        1: FeatureInputs(layer=18, feature=1, imported=(("theirs", text),)),
        2: FeatureInputs(layer=18, feature=2),
        3: FeatureInputs(layer=18, feature=3, imported=(("theirs", blank),)),
    }
    with pytest.raises(InputError, match="choose from"):
        explain_shard(None, inputs, ["theirs"])  # not a variant of the table itself
    frame = explain_shard(None, inputs, ["theirs"], table=with_imports([variant]))
    assert list(frame.columns) == EXPLANATIONS_SCHEMA.names
    assert frame[["feature", "step", "description", "llm_model"]].values.tolist() == [
        [1, "imported", "capital cities", "gpt-4o-mini"],
        [2, "missing_input", None, ""],
        [3, "missing_input", None, ""],
    ]
    assert frame["is_final"].all() and frame["variant"].eq("theirs").all()
    assert json.loads(frame["raw_text"].iloc[0]) == {
        "source": "neuronpedia",
        "file": "export.json",
        "source_id": "18-gemmascope-transcoder-16k",
        "method": "oai_token-act-pair",
        "explainer_model": "gpt-4o-mini",
        "n_explanations": 2,
    }
    assert frame["error"].tolist()[1:] == [
        "no explanation of this feature in the imported file (neuronpedia: export.json)",
        "the imported explanation is empty (neuronpedia: export.json)",
    ]


def test_our_variants_and_an_imported_one_in_one_call():
    """The table copy keeps our variants working beside the imported one."""
    variant = imported_variant("theirs", source="delphi", path="run")
    shown = (MarkedContext("The capital is", " Paris"),)
    inputs = {4: FeatureInputs(layer=0, feature=4, top_contexts=shown)}
    ours = next(v.name for v in TABLE if not v.needs_llm and not v.executable)
    frame = explain_shard(None, inputs, [ours, "theirs"], table=with_imports([variant]))
    assert frame["variant"].tolist() == [ours, "theirs"]


def test_an_import_may_not_take_a_name_of_the_table():
    for name in VARIANTS:
        with pytest.raises(InputError, match="is a variant of this project"):
            imported_variant(name, source="neuronpedia", path="x.json")


def test_import_rows_cover_every_feature_of_every_layer_keeping_the_first_explanation():
    frame = read_import(
        {"format": "neuronpedia", "path": str(DATA / "neuronpedia_export.json")}, target=GEMMA_2
    )
    variant = imported_variant("np", source="neuronpedia", path="neuronpedia_export.json")
    rows = import_rows(frame, variant, layers=(18, 20), width=16384)
    assert len(rows) == 2 * 16384 and rows["is_final"].all()
    assert rows.groupby("layer")["feature"].apply(lambda f: sorted(f) == list(range(16384))).all()
    got = rows[rows["step"] == "imported"].set_index(["layer", "feature"])
    expected = frame.drop_duplicates(["layer", "feature"]).set_index(["layer", "feature"])
    assert sorted(got.index) == sorted(expected.index)
    for key, row in got.iterrows():
        assert row["description"] == expected.loc[key, "description"]  # as it came, first one
        provenance = json.loads(row["raw_text"])
        assert provenance["source_id"] == expected.loc[key, "source_id"]
        assert provenance["n_explanations"] == int(
            ((frame["layer"] == key[0]) & (frame["feature"] == key[1])).sum()
        )
    assert (rows.loc[rows["step"] != "imported", "parse_status"] == "missing_input").all()
    # method: only explanations of that type; the feature's other explanation is then used
    only = import_rows(frame, variant, layers=(18,), width=16384, method="np_max-act-logits")
    kept = only[only["step"] == "imported"]
    assert kept[["feature", "description"]].values.tolist() == [
        [8, frame.loc[frame["method"] == "np_max-act-logits", "description"].iloc[0]]
    ]


def test_a_delphi_run_imports_with_the_explainer_given_or_its_own():
    run = {"format": "delphi", "path": str(DATA / "delphi_run")}
    target = TranscoderSet(model="gemma-2-2b", source_set="x", layers=(18,), width=16384)
    own = read_import(run, target=target)
    given = read_import({**run, "explainer_model": "other"}, target=target)
    assert set(own["explainer_model"]) != {"other"} and set(given["explainer_model"]) == {"other"}
    assert own["description"].tolist() == given["description"].tolist()


def _config(tmp_path: Path, imports: dict) -> dict:
    return {"models": {"gemma-3-270m": {"layers": [3], "imports": imports}}}


def test_imports_are_checked_at_start_naming_the_key(tmp_path):
    export = tmp_path / "ours.json"
    export.write_text("[]")

    def refused(imports: dict) -> str:
        with pytest.raises(InputError) as raised:
            validate_config(_config(tmp_path, imports), SCHEMA)
        return str(raised.value)

    key = "config key 'models.gemma-3-270m.imports"
    taken = VARIANTS[0]
    assert refused({taken: {"format": "neuronpedia", "path": str(export)}}).startswith(
        f"{key}.{taken}': imported variant {taken!r}: the name is a variant of this project"
    )
    assert refused({"np": {"format": "sae", "path": str(export)}}).startswith(
        f"{key}.np.format': unknown explanation format 'sae' (known: neuronpedia, delphi)"
    )
    assert refused({"np": {"format": "neuronpedia", "path": str(tmp_path / "no.json")}}) == (
        f"{key}.np.path': {tmp_path / 'no.json'} does not exist"
    )
    assert "Np" in refused({"Np": {"format": "neuronpedia", "path": str(export)}})
    config = validate_config(
        _config(tmp_path, {"np": {"format": "neuronpedia", "path": str(export)}}), SCHEMA
    )
    assert config["models"]["gemma-3-270m"]["imports"]["np"] == {
        "format": "neuronpedia",
        "path": str(export),
        "method": None,
        "explainer_model": None,
        "evaluate": True,
    }


def test_the_preflight_reads_every_import_and_names_the_entry(tmp_path):
    export = tmp_path / "theirs.json"
    entry = {"modelId": "gemma-3-270m", "layer": "3-circuit-insights-transcoder-2048"}
    export.write_text(json.dumps([{**entry, "index": "7", "description": "cats"}]))
    imports = {"np": {"format": "neuronpedia", "path": str(export)}}
    check_imports(validate_config(_config(tmp_path, imports), SCHEMA))  # the default width 2048
    export.write_text(json.dumps([{**entry, "index": "4096", "description": "cats"}]))
    with pytest.raises(InputError) as raised:
        check_imports(validate_config(_config(tmp_path, imports), SCHEMA))
    assert str(raised.value).startswith(
        f"config key 'models.gemma-3-270m.imports.np': Neuronpedia export {export}, entry 0:"
    )
    assert "feature 4096 of layer 3 is outside the transcoder's width 2048" in str(raised.value)


def test_the_summary_marks_an_imported_variant_with_its_source(tmp_path):
    from tests.test_summary import evaluation_row, fixture_weightlens, schema_frame

    variant = imported_variant("neuronpedia", source="neuronpedia", path="np/gemma.json")
    text = ImportedText(description="cats", source="neuronpedia", explainer_model="gpt-4o-mini")
    inputs = {0: FeatureInputs(layer=3, feature=0, imported=(("neuronpedia", text),))}
    explanations = explain_shard(None, inputs, ["neuronpedia"], table=with_imports([variant]))
    assert imported_sources(explanations)["neuronpedia"].label() == (
        "neuronpedia: np/gemma.json, by gpt-4o-mini"
    )
    ours = TABLE.llm_names[0]
    evaluation = schema_frame(
        FADE_EVALUATION_SCHEMA,
        [
            evaluation_row(3, 0, ours, clarity=0.5),
            evaluation_row(3, 0, "neuronpedia", clarity=0.25),
        ],
    )
    written = write_summary(
        evaluation,
        fixture_weightlens(),
        tmp_path,
        model="gemma-3-270m",
        n_boot=10,
        explanation_frames=[explanations],
    )
    lines = written["metric_table_md"].read_text().splitlines()
    marked = [line for line in lines if line.startswith("| neuronpedia (")]
    assert len(marked) == 1  # the paper's figures below also have a neuronpedia row
    assert marked[0].startswith(
        "| neuronpedia (imported: neuronpedia: np/gemma.json, by gpt-4o-mini)"
    )
    assert "0.25" in marked[0]
    assert any(line.startswith(f"| {ours} |") for line in lines)
    html = written["metric_table_html"].read_text()
    assert "neuronpedia (imported: neuronpedia: np/gemma.json, by gpt-4o-mini)" in html
    assert {"neuronpedia", ours} <= set(pd.read_parquet(written["metric_table"])["variant"])
