"""The workflow end to end on the CI config: the real embedded Gemma 3 270M, a transcoder trained
here, the sparse cache and sampling; plus dry runs and bad input through Snakemake itself."""

from __future__ import annotations

import json
import os
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
    for rule in ("build_embedded_model", "corpus", "train_transcoder", f"cache_{MODEL}", "sample"):
        assert rule in done.stdout, rule
    assert (
        "train_transcoder        3" in done.stdout.replace("\t", " ")
        or done.stdout.count("rule train_transcoder") == 3
    )


def test_every_expected_output_exists_and_nothing_partial(results):
    n_features = CI_CONFIG["models"][MODEL]["transcoders"]["n_features"]
    shard_size = CI_CONFIG["cache"]["shard_size"]
    assert len(shards(results)) == n_features // shard_size
    for kind in ("activations", "maxima", "feature_stats", "samples", "heldout_activations"):
        assert sorted(p.stem for p in (layer_dir(results) / kind).glob("*.parquet")) == shards(
            results
        )
    assert not list(results.rglob("*.partial"))
    assert (results / "logs" / MODEL / f"layer{LAYER}" / "cache.log").is_file()


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
    model_rules = ("train_transcoder", f"cache_{MODEL}", "weightlens", "attribution", "evaluate")
    for rule in model_rules:
        assert planned[rule] and all(f"gpu={gpus}" in line for line in planned[rule]), rule
    for rule in ("corpus", "sample", "cluster", "explain", "summarize"):
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
