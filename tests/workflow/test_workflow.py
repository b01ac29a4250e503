"""The workflow end to end on the CI config: the real embedded Gemma 3 270M, a transcoder trained
here, the sparse cache and sampling; plus dry runs and bad input through Snakemake itself."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from circuit_insights.data import schemas
from circuit_insights.data.cache_readers import dense_from_sparse
from circuit_insights.data.corpus import load_contexts
from circuit_insights.data.shards import make_shards, parse_shard
from circuit_insights.models.subject import SubjectModel
from circuit_insights.transcoders.formats import load_transcoder

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SNAKEMAKE = Path(sys.executable).parent / "snakemake"
CI_CONFIG = yaml.safe_load((ROOT / "config/ci.yaml").read_text())
MODEL = "gemma-3-270m"
LAYER = CI_CONFIG["models"][MODEL]["layers"][0]


def snakemake(
    results: Path,
    *args: str,
    config: str = "config/ci.yaml",
    check: bool = True,
    extra_config: tuple[str, ...] = (),
):
    """Run Snakemake in the repository on ``config`` with outputs under ``results``
    (``extra_config``: more ``KEY=VALUE`` items for ``--config``)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    command = [
        str(SNAKEMAKE),
        *args,  # targets first: the options below take several values each
        "--cores",
        "2",
        "--configfile",
        config,
        "--config",
        f"results_dir={results}",
        *extra_config,
        "--rerun-triggers",
        "mtime",
    ]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise AssertionError(f"snakemake failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
    return done


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    """One run of the CI config; every test below reads its outputs."""
    folder = tmp_path_factory.mktemp("results")
    snakemake(folder)
    return folder


def layer_dir(results: Path) -> Path:
    return results / MODEL / f"layer{LAYER}"


def shards(results: Path) -> list[str]:
    """The CI config's shard names (from the config, not from files a test may have deleted)."""
    block = CI_CONFIG["models"][MODEL]["transcoders"]
    return [s.name for s in make_shards(block["n_features"], CI_CONFIG["cache"]["shard_size"])]


def test_dry_run_of_the_default_config_lists_every_rule(tmp_path):
    done = snakemake(tmp_path, "-n", "--forceall", config="config/config.yaml")
    rules = ("build_embedded_model", "corpus", "collect_pairs", "train_transcoder", "cache")
    for rule in (*rules, "merge_cache", "sample"):
        assert rule in done.stdout, rule
    assert done.stdout.count("rule train_transcoder:") == 3  # one per layer
    assert done.stdout.count("rule collect_pairs:") == 1  # one forward for all three layers' pairs


def test_dry_run_in_chunks_caches_each_chunk_once_and_merges_every_chunk(tmp_path):
    """cache.chunk_contexts 100 cuts the CI config's 240 context ids into 3 chunks: one cache job
    per chunk (one forward pass for every layer), and every (layer, shard) merged from all 3."""
    chunked = 'cache={"chunk_contexts": 100, "shard_size": 128, "batch_size": 16}'
    done = snakemake(tmp_path / "out", "-n", extra_config=(chunked,))
    blocks = re.split(r"\n(?=(?:local)?rule \S+:)", done.stdout)

    def field(block: str, name: str) -> list[str]:
        found = re.search(rf"^\s+{name}: (.*)$", block, re.MULTILINE)
        assert found, block
        return sorted(found.group(1).split(", "))

    chunks = sorted(d for b in blocks if b.startswith("rule cache:") for d in field(b, "output"))
    assert [Path(d).name for d in chunks] == ["c000000-000100", "c000100-000200", "c000200-000240"]
    merges = [b for b in blocks if b.startswith("rule merge_cache:")]
    assert len(merges) == len(shards(tmp_path))
    for block in merges:
        assert field(block, "input") == chunks


def test_every_expected_output_exists_and_nothing_partial(results):
    n_features = CI_CONFIG["models"][MODEL]["transcoders"]["n_features"]
    shard_size = CI_CONFIG["cache"]["shard_size"]
    assert len(shards(results)) == n_features // shard_size
    for kind in ("activations", "maxima", "feature_stats", "samples", "heldout_activations"):
        assert sorted(p.stem for p in (layer_dir(results) / kind).glob("*.parquet")) == shards(
            results
        )
    assert not list(results.rglob("*.partial"))
    # One corpus chunk (the default cache.chunk_contexts), merged per shard.
    assert [p.name for p in (results / "logs" / MODEL / "cache").glob("*.log")] == [
        "c000000-000240.log"
    ]
    merge_logs = (results / "logs" / MODEL / f"layer{LAYER}" / "merge_cache").glob("*.log")
    assert sorted(p.stem for p in merge_logs) == shards(results)


def test_tokens_start_with_bos_and_split(results):
    path = results / MODEL / "corpus" / "tokens.parquet"
    assert pq.read_schema(path).equals(schemas.CORPUS_TOKENS_SCHEMA, check_metadata=False)
    _, cache = load_contexts(path, "cache")
    _, held_out = load_contexts(path, "eval")
    assert cache.shape[1] == CI_CONFIG["corpus"]["context_length"]
    assert (cache[:, 0] == 2).all() and (held_out[:, 0] == 2).all()  # Gemma's own BOS
    assert (cache[:, 1:] != 2).all()
    expected_eval = round(
        CI_CONFIG["corpus"]["max_contexts"] * CI_CONFIG["corpus"]["eval_fraction"]
    )
    assert len(held_out) == expected_eval
    assert len(cache) + len(held_out) == CI_CONFIG["corpus"]["max_contexts"]


def test_transcoder_report(results):
    report = json.loads((layer_dir(results) / "transcoder" / "report.json").read_text())
    n_features = CI_CONFIG["models"][MODEL]["transcoders"]["n_features"]
    assert 0 < report["fvu"] < 1
    assert 0 < report["mean_l0"] < n_features
    assert 0 <= report["dead_share"] <= 1
    assert report["loss_spliced"] > report["loss_clean"] > 0
    assert np.isfinite(report["loss_increase"])


@pytest.fixture(scope="module")
def model_and_transcoder(results):
    model = SubjectModel.from_pretrained(ROOT / "resources" / "models" / MODEL)
    transcoder = load_transcoder(layer_dir(results) / "transcoder", "native", layer=LAYER)
    return model, transcoder


def test_sparse_cache_reproduces_the_dense_activations(results, model_and_transcoder):
    model, transcoder = model_and_transcoder
    context_ids, tokens = load_contexts(results / MODEL / "corpus" / "tokens.parquet", "cache")
    chosen = context_ids[[0, 7, len(context_ids) - 1]]
    ids = torch.from_numpy(tokens[[0, 7, len(context_ids) - 1]].astype(np.int64))
    x = model.hook_values(ids, {LAYER: [transcoder.input_hook]})[(LAYER, transcoder.input_hook)]
    with torch.no_grad():
        dense = transcoder.encode(x)  # (3, pos, n_features)
    for name in shards(results):
        shard = parse_shard(name)
        sparse = pd.read_parquet(layer_dir(results) / "activations" / f"{name}.parquet")
        rebuilt = dense_from_sparse(sparse, chosen, tokens.shape[1], shard)
        torch.testing.assert_close(
            rebuilt, dense[..., shard.start : shard.stop], atol=1e-4, rtol=1e-4
        )


def test_artifact_schemas(results):
    name = shards(results)[0]
    for kind, schema in (
        ("activations", schemas.ACTIVATIONS_SCHEMA),
        ("maxima", schemas.MAXIMA_SCHEMA),
        ("feature_stats", schemas.FEATURE_STATS_SCHEMA),
        ("samples", schemas.SAMPLES_SCHEMA),
    ):
        path = layer_dir(results) / kind / f"{name}.parquet"
        assert pq.read_schema(path).equals(schema, check_metadata=False), kind


def test_maxima_and_samples_agree_with_the_activations(results):
    name = shards(results)[0]
    shard = parse_shard(name)
    activations = pd.read_parquet(layer_dir(results) / "activations" / f"{name}.parquet")
    maxima = pd.read_parquet(layer_dir(results) / "maxima" / f"{name}.parquet")
    samples = pd.read_parquet(layer_dir(results) / "samples" / f"{name}.parquet")
    counted = activations[~activations["excluded"]]
    assert (counted["position"] > 0).all()  # BOS excluded from maxima
    expected = counted.groupby(["feature", "context"])["activation"].max()
    got = maxima.set_index(["feature", "context"])["max_activation"].sort_index()
    pd.testing.assert_series_equal(got, expected.sort_index(), check_names=False)
    assert samples["feature"].between(shard.start, shard.stop - 1).all()
    quantile = samples[samples["kind"] == "quantile"]
    assert quantile.groupby("feature").size().max() <= CI_CONFIG["sampling"]["n_samples"]
    assert not samples.duplicated(["feature", "kind", "context"]).any()
    joined = quantile.merge(maxima, on=["feature", "context"])
    assert len(joined) == len(quantile)
    assert (joined["target_position"] == joined["max_position"]).all()
    np.testing.assert_allclose(joined["activation"], joined["max_activation"])
    firing = set(zip(maxima["feature"], maxima["context"], strict=True))
    negatives = samples[samples["kind"] == "negative"]
    assert not any(
        (f, c) in firing for f, c in zip(negatives["feature"], negatives["context"], strict=True)
    )


def test_deleting_one_shard_reruns_only_that_shard(results):
    first, second = shards(results)
    variant = CI_CONFIG["evaluate"]["variants"][0]
    target = layer_dir(results) / "evaluation" / variant / f"{first}.parquet"
    target.unlink()
    try:
        planned = snakemake(results, "-n").stdout
        assert planned.count("rule evaluate:") == 1, planned
        assert "rule summarize:" in planned and "rule report:" in planned
        assert f"shard={second}" not in planned
        assert "rule explain:" not in planned and "rule attribution:" not in planned
    finally:
        snakemake(results)  # later tests read every output
    assert target.is_file()


def _bad_config(tmp_path: Path, **changes) -> str:
    config = yaml.safe_load((ROOT / "config/ci.yaml").read_text())
    for dotted, value in changes.items():
        node = config
        *parents, last = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_missing_corpus_file_fails_at_start_naming_it(tmp_path):
    config = _bad_config(tmp_path, **{"corpus.source": "files", "corpus.paths": ["/no/such.txt"]})
    done = snakemake(tmp_path / "out", "-n", config=config, check=False)
    assert done.returncode != 0
    assert "corpus file /no/such.txt does not exist" in done.stderr + done.stdout


def test_layer_out_of_range_fails_at_start_naming_it(tmp_path):
    config = _bad_config(tmp_path, **{f"models.{MODEL}.layers": [3, 40]})
    done = snakemake(tmp_path / "out", "-n", config=config, check=False)
    assert done.returncode != 0
    assert "layer 40 is out of range" in done.stderr + done.stdout


def test_unknown_model_fails_at_start_naming_it(tmp_path):
    config = _bad_config(tmp_path, **{f"models.{MODEL}.source": "./no-such-model"})
    done = snakemake(tmp_path / "out", "-n", config=config, check=False)
    assert done.returncode != 0
    assert "unknown model './no-such-model'" in done.stderr + done.stdout


def _planned_resources(dry_run_stdout: str) -> dict[str, set[str]]:
    """rule -> the distinct ``resources:`` lines its planned jobs print in a dry run."""
    planned: dict[str, set[str]] = {}
    rule = None
    for line in dry_run_stdout.splitlines():
        if line.startswith(("rule ", "localrule ")):
            rule = line.split()[1].rstrip(":")
        elif line.strip().startswith("resources:") and rule:
            planned.setdefault(rule, set()).add(line.strip())
    return planned


@pytest.mark.parametrize(("device", "gpus"), [("cuda", 1), ("cuda:1", 1), ("cpu", 0)])
def test_jobs_that_run_the_model_ask_for_a_gpu_on_a_cuda_device(tmp_path, device, gpus):
    config = _bad_config(tmp_path, **{f"models.{MODEL}.device": device})
    planned = _planned_resources(snakemake(tmp_path / "out", "-n", config=config).stdout)
    model_rules = (
        "collect_pairs",
        "train_transcoder",
        "cache",
        "weightlens",
        "attribution",
        "evaluate",
    )
    for rule in model_rules:
        assert planned[rule] and all(f"gpu={gpus}" in line for line in planned[rule]), rule
    for rule in ("corpus", "merge_cache", "sample", "cluster", "explain", "summarize"):
        assert all("gpu=1" not in line for line in planned[rule]), rule


def test_empty_corpus_fails_naming_it_and_leaves_no_output(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    config = _bad_config(tmp_path, **{"corpus.source": "files", "corpus.paths": [str(empty)]})
    out = tmp_path / "out"
    done = snakemake(out, config=config, check=False)
    assert done.returncode != 0
    log = (out / "logs" / MODEL / "corpus.log").read_text()
    assert "empty" in log and "empty.txt" in log
    assert not (out / MODEL / "corpus" / "tokens.parquet").exists()
    assert not list(out.rglob("*.partial"))


def test_weightlens_outputs_validate_on_the_real_model(results, model_and_transcoder):
    model, transcoder = model_and_transcoder
    frames = [
        pd.read_parquet(layer_dir(results) / "weightlens" / f"{name}.parquet")
        for name in shards(results)
    ]
    frame = pd.concat(frames, ignore_index=True)
    for name, part in zip(shards(results), frames, strict=True):
        path = layer_dir(results) / "weightlens" / f"{name}.parquet"
        assert pq.read_schema(path).equals(schemas.WEIGHTLENS_SCHEMA, check_metadata=False)
        shard = parse_shard(name)
        assert sorted(part["feature"]) == list(range(shard.start, shard.stop))
    assert set(frame["classification"]) <= {"token_based", "context_dependent"}
    assert frame["description"].str.len().gt(0).all()
    with_tokens = frame[frame["validated_token_ids"].map(len) > 0]
    assert len(with_tokens) > 0
    for row in with_tokens.head(3).itertuples():
        assert set(row.validated_token_ids) <= set(row.candidate_token_ids)
        # Each validated token alone after Gemma's BOS activates the feature, by that amount.
        ids = torch.tensor([[2, int(token)] for token in row.validated_token_ids])
        x = model.hook_values(ids, {LAYER: [transcoder.input_hook]})[(LAYER, transcoder.input_hook)]
        with torch.no_grad():
            activation = transcoder.encode(x)[:, -1, row.feature]
        assert (activation > 0).all()
        np.testing.assert_allclose(
            activation.numpy(), row.validated_activations, rtol=1e-3, atol=1e-4
        )


def test_attribution_is_complete_on_the_real_model(results):
    for name in shards(results):
        totals = pd.read_parquet(layer_dir(results) / "attribution_totals" / f"{name}.parquet")
        contributions = pd.read_parquet(layer_dir(results) / "contributions" / f"{name}.parquet")
        assert pq.read_schema(layer_dir(results) / "contributions" / f"{name}.parquet").equals(
            schemas.ATTRIBUTION_CONTRIBUTIONS_SCHEMA, check_metadata=False
        )
        ok = totals[totals["status"] == "ok"]
        assert len(ok) > 0
        # Every leaf together is the pre-activation of a plain forward pass (fp32 tolerance).
        error = (ok["leaf_sum"] - ok["pre_activation"]).abs()
        assert (error <= 1e-4 * ok["pre_activation"].abs().clip(lower=1.0)).all()
        # The kept and dropped leaves account for everything.
        np.testing.assert_allclose(
            ok["kept_leaf_sum"] + ok["dropped_leaf_sum"], ok["leaf_sum"], rtol=1e-4, atol=1e-4
        )
        assert "head" in set(contributions["kind"])
        assert set(contributions["kind"]) <= {
            "embedding",
            "feature",
            "error",
            "mlp_error",
            "bias",
            "head",
            "logit",
            "top_token",
        }
        heads = contributions[contributions["kind"] == "head"]
        assert (heads["delta"] <= 0).all() and heads["layer"].le(LAYER).all()


def _server_processes() -> list[str]:
    done = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True)
    return [line for line in done.stdout.splitlines() if "vllm.entrypoints.openai" in line]


def test_explanations_come_from_a_real_vllm_server_that_is_gone_after_the_run(results):
    explained = pd.concat(
        pd.read_parquet(layer_dir(results) / "explanations" / f"{name}.parquet")
        for name in shards(results)
    )
    final = explained[explained["is_final"]]
    # the configured variants and, for every feature, the executable rules (rules.variants)
    assert set(final["variant"]) == set(CI_CONFIG["explain"]["variants"]) | set(
        CI_CONFIG["rules"]["variants"]
    )
    # LLM-free variants for every feature; LLM variants for the seeded draw of each shard
    n_features = CI_CONFIG["models"][MODEL]["transcoders"]["n_features"]
    assert (final["variant"] == "weightlens_rule").sum() == n_features
    per_shard = CI_CONFIG["explain"]["features_per_shard"]
    assert final.loc[final["variant"] == "maxact", "feature"].nunique() <= per_shard * len(
        shards(results)
    )
    answered = explained[explained["step"] == "describe"]
    assert len(answered) > 0
    assert (answered["llm_model"] == "smollm2").all()
    assert (answered["tokens_out"] > 0).all()  # generated by the server, over HTTP
    assert (answered["parse_status"] == "ok").mean() >= 0.5
    assert final["description"].notna().sum() >= len(final) // 2
    assert not (results / ".llm" / "server.json").exists()
    assert _server_processes() == []
    # every explain job that asked the LLM logged a progress line within its first minute (the
    # requests' count, rate and ETA, or the wait for the vLLM server the first job starts)
    markers = ("circuit_insights.progress: explain ", "waiting for the vLLM server")
    delays = _first_progress_delays(results, "explain", markers)
    assert delays and all(delay <= 60 for delay in delays), delays


def _first_progress_delays(results: Path, rule: str, markers: tuple[str, ...]) -> list[float]:
    """Seconds from a job log's first line to its first line containing one of ``markers``, for
    every log of ``rule`` (of the CI layer) that has one; log lines start with ``%(asctime)s``."""
    from datetime import datetime

    def stamp(line: str) -> datetime:
        return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")

    delays = []
    for log in sorted((results / "logs" / MODEL / f"layer{LAYER}" / rule).glob("*.log")):
        lines = [line for line in log.read_text().splitlines() if line[:2] == "20"]
        marked = [line for line in lines if any(m in line for m in markers)]
        if marked:
            delays.append((stamp(marked[0]) - stamp(lines[0])).total_seconds())
    return delays


def test_fade_scores_for_every_evaluated_variant(results):
    for name in shards(results):  # variants are compared on the same features
        explained = pd.read_parquet(layer_dir(results) / "explanations" / f"{name}.parquet")
        llm_explained = set(explained.loc[explained["variant"] == "cl_full", "feature"])
        scored = [
            set(
                pd.read_parquet(layer_dir(results) / "evaluation" / v / f"{name}.parquet")[
                    "feature"
                ]
            )
            for v in CI_CONFIG["evaluate"]["variants"]
        ]
        assert all(features == scored[0] for features in scored) and scored[0] <= llm_explained
    for variant in CI_CONFIG["evaluate"]["variants"]:
        for name in shards(results):
            path = layer_dir(results) / "evaluation" / variant / f"{name}.parquet"
            assert pq.read_schema(path).equals(schemas.FADE_EVALUATION_SCHEMA, check_metadata=False)
            frame = pd.read_parquet(path)
            assert len(frame) == CI_CONFIG["evaluate"]["features_per_shard"]
            for metric in ("clarity", "responsiveness", "purity", "faithfulness"):
                value, reason = frame[metric].iloc[0], frame[f"{metric}_reason"].iloc[0]
                assert (pd.isna(value) and isinstance(reason, str)) or 0 <= value <= 1, metric


def test_the_llm_simulates_by_the_real_servers_prompt_logprobs(results):
    """delphi_llm's simulation on the CI run: delphi's expected-value simulator, one request per
    sequence to the run's real vLLM server, answers read from its prompt log-probabilities."""
    frames = [
        pd.read_parquet(layer_dir(results) / "delphi-llm" / f"{name}.parquet")
        for name in shards(results)
    ]
    simulation = pd.concat(frames)
    simulation = simulation[(simulation["score"] == "simulation") & (simulation["group"] == "all")]
    assert len(simulation) and (simulation["simulation_mode"] == "expected_value").all()
    scored = simulation[simulation["reason"].isna()]
    assert len(scored), simulation[["variant", "reason"]]
    assert (scored["llm_calls"] == scored["n_examples"]).all()  # one prompt per sequence
    assert (scored["llm_tokens_out"] <= scored["llm_calls"]).all()  # nothing generated but 1
    assert (scored["n_failed"] < scored["n_examples"]).all()  # the answers could be read
    assert scored["correlation"].between(-1, 1).all()


def test_rule_rater_scores_every_feature_and_the_summary_compares_the_four_rules(results):
    variants = CI_CONFIG["rules"]["variants"]
    assert sorted(variants) == sorted(["maxact_rule", "weightlens_rule", "cl_rule", "wl_cl_rule"])
    for name in shards(results):
        path = layer_dir(results) / "evaluation-rules" / f"{name}.parquet"
        assert pq.read_schema(path).equals(schemas.FADE_EVALUATION_SCHEMA, check_metadata=False)
        frame = pd.read_parquet(path)
        weightlens = pd.read_parquet(layer_dir(results) / "weightlens" / f"{name}.parquet")
        # Every feature of the shard, every rule variant, rated by the rule (no LLM call).
        assert set(frame["feature"]) == set(weightlens["feature"])
        assert (frame.groupby("feature")["variant"].apply(set) == set(variants)).all()
        assert (frame["rater"] == "rule").all() and (frame["llm_calls"] == 0).all()
        for metric in ("clarity", "responsiveness", "purity"):
            values, reasons = frame[metric], frame[f"{metric}_reason"]
            assert ((values >= 0) & (values <= 1) | (values.isna() & reasons.notna())).all()
    summary_dir = results / MODEL / "summary"
    table = pd.read_parquet(summary_dir / "rule_comparison.parquet")
    assert set(table["variant"]) == set(variants)
    assert set(table["metric"]) == {"clarity", "responsiveness", "purity"}
    enough = table[table["n"] >= 3]
    assert len(enough) and (enough["ci_low"] <= enough["mean"]).all()
    assert (summary_dir / "plots" / "rule_comparison.png").is_file()
    claims = pd.read_parquet(summary_dir / "paper_claims.parquet")
    assert {"weightlens_rule", "wl_cl_rule", "cl_rule"} <= set(claims["method"])
    assert claims["verdict"].str.len().gt(0).all()
    index = (results / "report" / "index.html").read_text()
    assert "rule-rated" in index and "The paper's claims, checked on these scores" in index


def test_a_rerun_sends_nothing_already_answered(results):
    import sqlite3

    cache = results / ".llm" / "responses.sqlite"
    count = sqlite3.connect(cache).execute("select count(*) from responses").fetchone()[0]
    target = layer_dir(results) / "explanations" / f"{shards(results)[0]}.parquet"
    before = pd.read_parquet(target)
    target.unlink()
    snakemake(results, str(target))
    after = pd.read_parquet(target)
    assert sqlite3.connect(cache).execute("select count(*) from responses").fetchone()[0] == count
    answered = after[after["step"] == "describe"]
    assert answered["cached"].all()
    pd.testing.assert_series_equal(
        before["description"].reset_index(drop=True), after["description"].reset_index(drop=True)
    )


def test_the_server_is_stopped_when_the_run_fails(results, tmp_path):
    import shutil

    copy = tmp_path / "results"
    shutil.copytree(results, copy)
    first, second = shards(copy)
    (layer_dir(copy) / "explanations" / f"{first}.parquet").unlink()  # needs the LLM again
    for variant in CI_CONFIG["evaluate"]["variants"]:
        (layer_dir(copy) / "evaluation" / variant / f"{first}.parquet").unlink()
    (copy / ".llm" / "responses.sqlite").unlink()  # so the explain job must ask the server
    broken = layer_dir(copy) / "heldout_activations" / f"{second}.parquet"
    broken.write_bytes(b"not parquet")
    for variant in CI_CONFIG["evaluate"]["variants"]:
        (layer_dir(copy) / "evaluation" / variant / f"{second}.parquet").unlink()
    done = snakemake(copy, "-k", check=False)
    assert done.returncode != 0
    assert (layer_dir(copy) / "explanations" / f"{first}.parquet").is_file()
    assert not (copy / ".llm" / "server.json").exists()
    assert _server_processes() == []


def test_summary_tables_plots_and_report(results):
    summary_dir = results / MODEL / "summary"
    summary = pd.read_parquet(summary_dir / "summary.parquet")
    assert {"weightlens_auroc", "clarity"} <= set(summary["metric"])
    # Every feature has at least one score that does not depend on the evaluator LLM.
    llm_free = summary[summary["metric"].str.startswith("weightlens_")]
    assert set(summary["feature"]) <= set(llm_free["feature"])
    table = (summary_dir / "metric_table.md").read_text()
    assert "clarity" in table.lower() and str(LAYER) in table
    assert list((summary_dir / "plots").glob("*.png"))
    index = results / "report" / "index.html"
    html = index.read_text()
    assert "gemma-3-270m" in html
    pages = list((results / "report").rglob("feature*.html"))
    assert pages
    page = pages[0].read_text()
    assert "WeightLens" in page


# --- no silent success: an LLM that fails its requests fails the run ---------------------------


class _OpenAIStandIn:
    """A real HTTP server on 127.0.0.1: lists ``model`` at ``GET /v1/models``; chat completions
    are forwarded to ``upstream`` (a real vLLM server), answered 501 when there is none, and after
    ``die_after`` forwarded answers the server dies (the connection dropped, then refused)."""

    def __init__(self, model: str, upstream: str | None = None, die_after: int | None = None):
        import http.server
        import threading
        import urllib.request

        stand_in = self
        self.arrived = 0
        self.forwarded: list[bytes] = []  # request bodies answered by the upstream server
        self.lock = threading.Lock()

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, status: int, body: bytes, kind: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if self.path == "/v1/models":
                    self._send(200, json.dumps({"data": [{"id": model}]}).encode())
                else:
                    self._send(404, b"not found", "text/plain")

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if upstream is None:
                    self._send(501, b"Unsupported method ('POST')", "text/plain")
                    return
                with stand_in.lock:
                    dead = die_after is not None and stand_in.arrived >= die_after
                    stand_in.arrived += 1
                if dead:
                    self.close_connection = True  # no answer: the server died mid-request
                    threading.Thread(target=stand_in.stop, daemon=True).start()
                    return
                request = urllib.request.Request(
                    upstream + self.path.removeprefix("/v1"),
                    data=body,
                    headers={"Content-Type": "application/json"},
                )
                with urllib.request.urlopen(request, timeout=600) as answer:
                    data = answer.read()
                with stand_in.lock:
                    stand_in.forwarded.append(body)
                self._send(200, data)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _llm_config(url: str, model: str) -> str:
    return "llm=" + json.dumps({"url": url, "model": model, "max_retries": 1, "timeout_s": 300})


def _copy_without_explanations(results: Path, tmp_path: Path) -> tuple[Path, Path]:
    import shutil

    copy = tmp_path / "results"
    shutil.copytree(results, copy)
    target = layer_dir(copy) / "explanations" / f"{shards(copy)[0]}.parquet"
    target.unlink()
    (copy / ".llm" / "responses.sqlite").unlink()  # every request goes to the server
    return copy, target


def test_an_llm_url_that_fails_every_request_fails_the_run(results, tmp_path):
    """The issue's case: a server that answers its model list but no chat completion (501)."""
    copy, target = _copy_without_explanations(results, tmp_path)
    server = _OpenAIStandIn("smollm2")
    try:
        done = snakemake(
            copy, str(target), check=False, extra_config=(_llm_config(server.url, "smollm2"),)
        )
    finally:
        server.stop()
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert f"LLM requests to {server.url} failed (llm.max_failed_share 0)" in output
    assert "HTTP 501: Unsupported method" in output
    assert not target.exists()  # nothing that looks complete


def test_the_server_dying_during_explain_fails_the_run_and_a_rerun_sends_only_the_rest(
    results, tmp_path
):
    import sqlite3

    from circuit_insights.llm.server import start_shared_server, stop_shared_server

    copy, target = _copy_without_explanations(results, tmp_path)
    state = tmp_path / "server.json"
    served = start_shared_server(
        ROOT / "resources" / "models" / "smollm2-135m-instruct",
        state,
        stop_at_exit=True,
        served_model_name="smollm2",
        python=str(ROOT / ".venv-llm" / "bin" / "python"),
        kv_cache_space_gib=1,
        startup_timeout_s=900,
        log_path=str(tmp_path / "server.log"),
    )
    try:
        dying = _OpenAIStandIn("smollm2", upstream=served["url"], die_after=2)
        first = snakemake(
            copy, str(target), check=False, extra_config=(_llm_config(dying.url, "smollm2"),)
        )
        dying.stop()
        output = first.stdout + first.stderr
        assert first.returncode != 0
        assert f"LLM server at {dying.url} failed" in output
        assert not target.exists()
        cache = copy / ".llm" / "responses.sqlite"
        kept = sqlite3.connect(cache).execute("select count(*) from responses").fetchone()[0]
        assert kept == 2  # the answers received before the server died

        back = _OpenAIStandIn("smollm2", upstream=served["url"])  # the server is back
        second = snakemake(
            copy, str(target), check=False, extra_config=(_llm_config(back.url, "smollm2"),)
        )
        back.stop()
    finally:
        stop_shared_server(state)
    assert second.returncode == 0, second.stderr[-3000:]
    written = pd.read_parquet(target)
    answered = written[written["tokens_out"] > 0]
    assert answered["cached"].sum() == 2  # the two answers from before the server died
    assert len(dying.forwarded) == 2 and back.forwarded
    assert not set(dying.forwarded) & set(back.forwarded)  # none of them was asked again


# --- across the border (issue 22): graphs labelled, exports read back, a graph run -------------


def _ci_target():
    from circuit_insights.pipeline.config import load_config
    from circuit_insights.pipeline.interop import transcoder_set

    config = load_config(ROOT / "config/ci.yaml", ROOT / "workflow/schemas/config.schema.yaml")
    return config, transcoder_set(config, MODEL)


def _final_rows(results: Path) -> pd.DataFrame:
    frames = [
        pd.read_parquet(layer_dir(results) / "explanations" / f"{name}.parquet")
        for name in shards(results)
    ]
    explained = pd.concat(frames, ignore_index=True)
    return explained[explained["is_final"]]


def _fields_differ(a, b, path: str = "") -> list[str]:
    """Every path at which two JSON values differ (keys, their order, values)."""
    if isinstance(a, dict) and isinstance(b, dict):
        if list(a) != list(b):
            return [f"{path}: keys {list(a)} != {list(b)}"]
        return [d for key in a for d in _fields_differ(a[key], b[key], f"{path}.{key}")]
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: {len(a)} != {len(b)} items"]
        return [
            d
            for i, (x, y) in enumerate(zip(a, b, strict=True))
            for d in _fields_differ(x, y, f"{path}[{i}]")
        ]
    return [] if a == b and type(a) is type(b) else [path]


def test_labels_go_into_a_copy_of_the_graph_and_nothing_else_changes(results, tmp_path):
    """Rule label_graph's stage on the CI run's explanations: each feature node's clerp becomes
    the first described variant of labels.variants, a feature none describes keeps its label,
    and no other field of the file changes."""
    from circuit_insights.interop.graph_example import write_example_graph
    from circuit_insights.pipeline.config import load_schema
    from circuit_insights.pipeline.interop import target_params
    from circuit_insights.pipeline.stages.label_graph import run_label_graph_stage

    config, target = _ci_target()
    final = _final_rows(results)
    described = final[final["description"].notna() & (final["description"] != "")]
    order = load_schema(ROOT / "workflow/schemas/config.schema.yaml")["properties"]["labels"][
        "properties"
    ]["variants"]["default"]
    by_llm = sorted(set(described.loc[described["variant"] == "cl_full", "feature"]))
    by_rule_only = sorted(
        set(described.loc[described["variant"] == "weightlens", "feature"]) - set(by_llm)
    )
    undescribed = sorted(
        set(range(target.width)) - set(described.loc[described["variant"].isin(order), "feature"])
    )
    assert by_llm and by_rule_only
    chosen = {LAYER: by_llm[:2] + by_rule_only[:2] + undescribed[:1]}
    source = tmp_path / "cat.json"
    write_example_graph(
        source, target=target, features=chosen, prompt_tokens=["<bos>", "The", " cat", " sat"]
    )
    graph = json.loads(source.read_text())
    for node in graph["nodes"]:
        if node["feature_type"] == "cross layer transcoder":
            node["clerp"] = "the user's own label"
    source.write_text(json.dumps(graph, indent=2))

    written = run_label_graph_stage(
        graph_path=str(source),
        explanation_files=[
            str(layer_dir(results) / "explanations" / f"{name}.parquet") for name in shards(results)
        ],
        label_variants=order,
        target_config=target_params(config, MODEL),
        out_dir=str(tmp_path / "graph"),
    )
    assert written == tmp_path / "graph" / "cat.json"
    labelled = json.loads(written.read_text())
    expected_labels = {}
    for feature in chosen[LAYER]:
        rows = described[described["feature"] == feature].set_index("variant")["description"]
        expected_labels[feature] = next((rows[v] for v in order if v in rows.index), None)
    if undescribed:  # the CI run's features without any label variant's description
        assert expected_labels[undescribed[0]] is None
    differences = _fields_differ(graph, labelled)
    expected = []
    for number, node in enumerate(graph["nodes"]):
        if node["feature_type"] != "cross layer transcoder":
            continue
        feature = int(node["node_id"].split("_")[1])
        label = expected_labels[feature]
        if label is not None:
            expected.append(f".nodes[{number}].clerp")
            assert labelled["nodes"][number]["clerp"] == label
        else:
            assert labelled["nodes"][number]["clerp"] == "the user's own label"
    assert differences == expected  # nothing else changed, keys in their order
    index = json.loads((tmp_path / "graph" / "graph-metadata.json").read_text())
    assert index == {"graphs": [graph["metadata"]]}


def test_the_exports_read_back_with_the_same_descriptions_ids_and_scores(results):
    """Rule export (on by default) on the CI run: Neuronpedia's export and the delphi runs, read
    back by the importers, give every final description of every variant with its ids, and the
    summary's scores."""
    from circuit_insights.interop.delphi import read_delphi, read_delphi_scores
    from circuit_insights.interop.neuronpedia import read_neuronpedia

    _, target = _ci_target()
    final = _final_rows(results)
    described = final[final["description"].notna() & (final["description"] != "")]
    expected = sorted(
        (int(r.layer), int(r.feature), str(r.variant), str(r.description))
        for r in described.itertuples()
    )
    export = results / MODEL / "export"
    from_neuronpedia = read_neuronpedia(export / "neuronpedia.json", target=target)
    assert (from_neuronpedia["source_id"] == f"{LAYER}-{target.source_set}").all()
    got = sorted(
        (int(r.layer), int(r.feature), str(r.method), str(r.description))
        for r in from_neuronpedia.itertuples()
    )
    assert got == expected
    from_delphi = read_delphi(export / "delphi", target=target)
    assert (from_delphi["source_id"] == f"layers.{LAYER}.mlp").all()
    got = sorted(
        (int(r.layer), int(r.feature), str(r.method), str(r.description))
        for r in from_delphi.itertuples()
    )
    assert got == expected
    llm = described[described["llm_model"] != ""]
    assert set(
        from_delphi.loc[from_delphi["method"].isin(set(llm["variant"])), "explainer_model"]
    ) == set(llm["llm_model"])

    summary = pd.read_parquet(results / MODEL / "summary" / "summary.parquet")
    scored = summary[summary["value"].notna() & summary["variant"].isin(set(described["variant"]))]
    keys = set(zip(described["layer"], described["feature"], described["variant"], strict=True))
    scored = scored[
        [k in keys for k in zip(scored["layer"], scored["feature"], scored["variant"], strict=True)]
    ]
    assert len(scored) > 0
    expected_scores = sorted(
        (int(r.layer), int(r.feature), str(r.variant), str(r.metric), float(r.value))
        for r in scored.itertuples()
    )
    entries = json.loads((export / "neuronpedia.json").read_text())
    got_scores = sorted(
        (
            target.source_ids[e["layer"]],
            int(e["index"]),
            e["typeName"],
            s["explanationScoreTypeName"],
            s["value"],
        )
        for e in entries
        for s in e["scores"]
    )
    assert got_scores == expected_scores
    delphi_scores = read_delphi_scores(export / "delphi", target=target)
    got_scores = sorted(
        (int(r.layer), int(r.feature), str(r.method), str(r.scorer), float(r.score))
        for r in delphi_scores.itertuples()
    )
    assert got_scores == expected_scores


def test_the_graph_example_runs_end_to_end_from_select_features_on(results, tmp_path):
    """config/examples/graph.yaml's keys (a graph's features named, features_per_shard 0, the
    label order) and an imported variant on a copy of the CI run, at the CI run's size: only
    select_features and what follows run; the graph's features go through attribution,
    explanation and FADE, the labelled graph, the report's graph page, the imported variant's
    scores (our own export of cl_full read back: the same scores as cl_full) and its mark in
    the metric table. The graph names the CI run's drawn features and one that never fires, so
    every LLM request is answered from the run's response cache: the LLM is a stand-in server
    that lists the model and refuses every completion."""
    import shutil

    from circuit_insights.interop.graph_example import write_example_graph
    from circuit_insights.pipeline.config import load_config

    example = yaml.safe_load((ROOT / "config/examples/graph.yaml").read_text())
    example_graph = json.loads((ROOT / example["models"][MODEL]["graph"]).read_text())
    load_config(ROOT / "config/examples/graph.yaml", ROOT / "workflow/schemas/config.schema.yaml")

    copy = tmp_path / "results"
    shutil.copytree(results, copy)
    _, target = _ci_target()
    drawn, silent = [], []
    for name in shards(copy):
        selection = pd.read_parquet(layer_dir(copy) / "features" / f"{name}.parquet")
        drawn += sorted(selection.loc[selection["selected"], "feature"])
        samples = pd.read_parquet(layer_dir(copy) / "samples" / f"{name}.parquet")
        shard = parse_shard(name)
        fired = set(samples.loc[samples["kind"] == "quantile", "feature"])
        silent += sorted(set(range(shard.start, shard.stop)) - fired)[:1]  # none, maybe
    named = sorted(drawn + silent[:1])
    graph = tmp_path / "graph.json"
    metadata = example_graph["metadata"]
    write_example_graph(
        graph,
        target=target,
        features={LAYER: named},
        prompt_tokens=metadata["prompt_tokens"],
        token_ids=[
            int(n["node_id"].split("_")[1]) for n in example_graph["nodes"] if n["layer"] == "E"
        ],
        n_layers=18,
        slug=metadata["slug"],
    )
    export = tmp_path / "theirs.json"  # our CI run's export, read back as an imported variant
    shutil.copy(copy / MODEL / "export" / "neuronpedia.json", export)

    config = yaml.safe_load((ROOT / "config/ci.yaml").read_text())
    config["models"][MODEL]["graph"] = str(graph)
    config["models"][MODEL]["imports"] = {
        "theirs": {"format": "neuronpedia", "path": str(export), "method": "cl_full"}
    }
    config["explain"]["features_per_shard"] = example["explain"]["features_per_shard"]
    config["labels"] = example["labels"]
    config["rules"]["variants"] = []  # the rule rater (3-4 min here) is the CI run's to test
    path = tmp_path / "graph-ci.yaml"
    path.write_text(yaml.safe_dump(config))

    server = _OpenAIStandIn("smollm2")  # lists the model; any completion would fail (501)
    try:
        llm = ("llm=" + json.dumps({"url": server.url, "model": "smollm2", "max_retries": 0}),)
        # --forcerun select_features: the copy has no Snakemake metadata of its params (the
        # named features), and what follows reruns because its inputs are newer.
        again = ("--forcerun", "select_features")
        planned = snakemake(copy, "-n", *again, config=str(path), extra_config=llm).stdout
        rules = set(re.findall(r"^(?:local)?rule (\w+):", planned, re.MULTILINE))
        assert "select_features" in rules and "label_graph" in rules, rules
        assert not rules & {
            "corpus",
            "collect_pairs",
            "train_transcoder",
            "cache",
            "merge_cache",
            "sample",
            "weightlens",
        }
        snakemake(copy, *again, config=str(path), extra_config=llm)
    finally:
        server.stop()

    for name in shards(copy):  # the named features, nothing drawn
        selection = pd.read_parquet(layer_dir(copy) / "features" / f"{name}.parquet")
        shard = parse_shard(name)
        assert sorted(selection.loc[selection["selected"], "feature"]) == [
            f for f in named if shard.start <= f < shard.stop
        ]
        assert set(selection.loc[selection["selected"], "reason"]) == {"named"}
    final = _final_rows(copy)
    llm_rows = final[final["variant"] == "cl_full"]
    assert sorted(llm_rows["feature"]) == named  # the LLM variants on the named features only

    # the labelled graph: the first described variant of labels.variants, as the rule says
    (written,) = (copy / MODEL / "graph").glob(f"{metadata['slug']}.json")
    labelled = json.loads(written.read_text())
    described = final[final["description"].notna() & (final["description"] != "")]
    for node in labelled["nodes"]:
        if node["feature_type"] != "cross layer transcoder":
            continue
        rows = described[described["feature"] == int(node["node_id"].split("_")[1])]
        by_variant = dict(zip(rows["variant"], rows["description"], strict=True))
        expected = next(
            (by_variant[v] for v in config["labels"]["variants"] if v in by_variant), ""
        )
        assert node["clerp"] == expected
    assert (
        json.loads((copy / MODEL / "graph" / "graph-metadata.json").read_text())["graphs"][0][
            "slug"
        ]
        == metadata["slug"]
    )

    # the imported copy of cl_full gets cl_full's scores on the features both describe
    metrics = ["clarity", "responsiveness", "purity", "faithfulness"]
    for name in shards(copy):
        ours = pd.read_parquet(layer_dir(copy) / "evaluation" / "cl_full" / f"{name}.parquet")
        theirs = pd.read_parquet(layer_dir(copy) / "evaluation" / "theirs" / f"{name}.parquet")
        assert len(theirs) and set(theirs["feature"]) <= set(ours["feature"])
        joined = theirs.merge(ours, on="feature", suffixes=("_theirs", "_ours"))
        for metric in metrics:
            pd.testing.assert_series_equal(
                joined[f"{metric}_theirs"], joined[f"{metric}_ours"], check_names=False
            )
    imported = pd.read_parquet(copy / MODEL / "imported" / "theirs.parquet")
    assert len(imported) == target.width and imported["is_final"].all()
    assert set(imported["step"]) <= {"imported", "missing_input"}
    table = (copy / MODEL / "summary" / "metric_table.md").read_text()
    assert f"| theirs (imported: neuronpedia: {export}" in table

    # the report's graph page: every graph feature, linked to its page
    page = (copy / "report" / MODEL / "graph.html").read_text()
    for feature in named:
        assert f'href="layer{LAYER}/feature{feature:06d}.html"' in page
        assert (copy / "report" / MODEL / f"layer{LAYER}" / f"feature{feature:06d}.html").is_file()
    assert "(imported: neuronpedia:" in (copy / "report" / "index.html").read_text()
