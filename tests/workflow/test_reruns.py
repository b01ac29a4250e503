"""Rerunning parts of a finished run of the CI config: one shard by name, one shard after deleting
its output, a job killed mid-write, and independent shards past a failure (``-k``); and, under
Snakemake's default rerun triggers, which jobs an edit of one config key schedules.

One completed run is made per module; every test works on its own copy (mtimes kept, so Snakemake
with ``--rerun-triggers mtime`` sees the copy as up to date). The run builds the CI config's
targets through sampling (``TARGETS``: the transcoder, the sparse cache and the samples of every
shard); the per-shard stages after it (WeightLens, attribution, LLM explanations) would add
minutes and nothing to what is tested here.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from circuit_insights.data.shards import make_shards

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SNAKEMAKE = Path(sys.executable).parent / "snakemake"
CI_CONFIG = yaml.safe_load((ROOT / "config/ci.yaml").read_text())
MODEL = "gemma-3-270m"
LAYER = CI_CONFIG["models"][MODEL]["layers"][0]
SHARDS = [
    shard.name
    for shard in make_shards(
        CI_CONFIG["models"][MODEL]["transcoders"]["n_features"], CI_CONFIG["cache"]["shard_size"]
    )
]
CACHE_KINDS = (
    "activations",
    "maxima",
    "feature_stats",
    "heldout_activations",
    "heldout_maxima",
    "heldout_feature_stats",
)
TARGETS = ("samples",)
"""Per-shard artifacts the module's run builds (with everything they need)."""
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def snakemake_command(results: Path, *args: str, cores: int = 2) -> list[str]:
    return [
        str(SNAKEMAKE),
        *args,  # targets first: the options below take several values each
        "--cores",
        str(cores),
        "--configfile",
        "config/ci.yaml",
        "--rerun-triggers",
        "mtime",
        "--config",
        f"results_dir={results}",
    ]


def snakemake(
    results: Path, *args: str, check: bool = True, cores: int = 2
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        snakemake_command(results, *args, cores=cores),
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
    )
    if check and done.returncode != 0:
        raise AssertionError(f"snakemake failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
    return done


def planned_jobs(dry_run_output: str) -> list[tuple[str, list[str]]]:
    """(rule, outputs) of every job a dry run lists."""
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \S+:)", dry_run_output):
        match = re.match(r"(?:local)?rule (\S+):", block)
        if match is None:
            continue
        outputs = re.search(r"^\s+output: (.*)$", block, re.MULTILINE)
        jobs.append((match.group(1), outputs.group(1).split(", ") if outputs else []))
    return jobs


def targets(results: Path) -> list[str]:
    """The files the module's run builds: TARGETS of every shard."""
    return [str(artifact(results, kind, shard)) for kind in TARGETS for shard in SHARDS]


def layer_dir(results: Path) -> Path:
    return results / MODEL / f"layer{LAYER}"


def artifact(results: Path, kind: str, shard: str) -> Path:
    return layer_dir(results) / kind / f"{shard}.parquet"


def mtimes(results: Path) -> dict[Path, int]:
    return {
        path.relative_to(results): path.stat().st_mtime_ns
        for path in results.rglob("*.parquet")
        if MODEL in path.parts
    }


def parses_as_complete_parquet(path: Path) -> bool:
    try:
        pq.read_table(path)
    except Exception:  # noqa: BLE001 - any failure means the file is not a complete parquet file
        return False
    return True


@pytest.fixture(scope="module")
def completed(tmp_path_factory) -> Path:
    """One finished run of the CI config."""
    results = tmp_path_factory.mktemp("completed") / "results"
    snakemake(results, *targets(results))
    return results


@pytest.fixture
def results(completed, tmp_path) -> Path:
    """A copy of the finished run for one test (file times kept)."""
    copy = tmp_path / "results"
    shutil.copytree(completed, copy)
    assert planned_jobs(snakemake(copy, *targets(copy), "-n").stdout) == [], "must be up to date"
    return copy


def test_naming_one_shard_file_rebuilds_exactly_that_shard(results, completed) -> None:
    target = artifact(results, "samples", SHARDS[-1])
    planned = planned_jobs(snakemake(results, str(target), "--force", "-n").stdout)
    assert planned == [("sample", [str(target)])]

    before = mtimes(results)
    snakemake(results, str(target), "--force")
    after = mtimes(results)
    changed = {path for path in before if before[path] != after[path]}
    assert changed == {target.relative_to(results)}
    pd.testing.assert_frame_equal(  # seeded sampling: the same contexts again
        pd.read_parquet(target), pd.read_parquet(artifact(completed, "samples", SHARDS[-1]))
    )


def test_deleting_one_shard_output_reruns_only_that_shards_jobs(results) -> None:
    deleted, other = SHARDS[0], SHARDS[1]
    target = artifact(results, "samples", deleted)
    target.unlink()
    planned = planned_jobs(snakemake(results, *targets(results), "-n").stdout)
    assert ("sample", [str(target)]) in planned
    for rule, outputs in planned:
        assert not any(other in output for output in outputs), f"{rule} reruns shard {other}"
        shard_names = {name for output in outputs for name in SHARDS if name in output}
        assert shard_names <= {deleted}, (rule, outputs)  # that shard's jobs, or gathers
    assert not {"cache", "merge_cache"} & {rule for rule, _ in planned}
    snakemake(results, str(target))
    assert parses_as_complete_parquet(target)


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children of children too)."""
    found, queue = [], [pid]
    while queue:
        parent = queue.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            found += children
            queue += children
    return found


def test_job_killed_mid_write_leaves_nothing_complete_and_is_redone(results, completed) -> None:
    """SIGKILL to the whole Snakemake process group while the cache job writes its chunk."""
    for kind in CACHE_KINDS:
        shutil.rmtree(layer_dir(results) / kind)
    partial_dir = results / MODEL / "cache_chunks"  # rule cache's folder of each corpus chunk
    shutil.rmtree(partial_dir)
    process = subprocess.Popen(
        # --nolock: the killed Snakemake cannot remove its lock, and `--unlock` would also remove
        # the locks of other runs in this working directory.
        snakemake_command(results, str(artifact(results, "maxima", SHARDS[0])), "--nolock"),
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 600
        while not list(partial_dir.rglob(".*.partial")):
            assert process.poll() is None, "the cache job ended before it was killed"
            assert time.monotonic() < deadline, "the cache job never started writing"
            time.sleep(0.05)
        doomed = _descendants(process.pid)
        os.killpg(process.pid, signal.SIGKILL)
        for pid in doomed:  # in case a job runs in a session of its own
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)

    # Killed mid-write: temporaries only; nothing under an output's name that is not complete.
    assert list(partial_dir.rglob(".*.partial")), "the kill must catch the job mid-write"
    for folder in [partial_dir, *(layer_dir(results) / kind for kind in CACHE_KINDS)]:
        for path in folder.rglob("*.parquet"):
            if not path.name.startswith("."):
                assert parses_as_complete_parquet(path), f"{path} looks complete but is not"
    stale = sorted(p.name for p in results.rglob(".*.partial"))

    cache_outputs = [
        str(artifact(results, kind, shard)) for kind in CACHE_KINDS for shard in SHARDS
    ]
    snakemake(results, *cache_outputs, "--rerun-incomplete")

    for kind in CACHE_KINDS:
        for shard in SHARDS:
            pd.testing.assert_frame_equal(  # the redone cache equals the first run's
                pd.read_parquet(artifact(results, kind, shard)),
                pd.read_parquet(artifact(completed, kind, shard)),
            )
    assert planned_jobs(snakemake(results, *cache_outputs, "-n").stdout) == []
    leftover = sorted(p.name for p in results.rglob(".*.partial"))
    assert set(leftover) <= set(stale), "the rerun itself leaves no temporaries"
    print(f"temporaries of the killed job: {len(stale)}, left after the rerun: {len(leftover)}")


def test_keep_going_builds_the_other_shard_past_a_failure(results) -> None:
    """One job at a time, the broken shard first: without -k the run stops at its failure, with
    -k the intact shard is built after it."""
    broken, intact = SHARDS[0], SHARDS[1]
    for shard in SHARDS:
        artifact(results, "samples", shard).unlink()
    artifact(results, "maxima", broken).write_bytes(b"PAR1 this is not a parquet file")
    first = ("--prioritize", str(artifact(results, "samples", broken)))

    stopped = snakemake(results, *targets(results), *first, check=False, cores=1)
    assert stopped.returncode != 0
    assert not artifact(results, "samples", intact).exists(), "without -k the run stops"

    done = snakemake(results, *targets(results), *first, "-k", check=False, cores=1)

    assert done.returncode != 0
    assert not artifact(results, "samples", broken).exists()
    assert parses_as_complete_parquet(artifact(results, "samples", intact))
    log = results / "logs" / MODEL / f"layer{LAYER}" / "sample" / f"{broken}.log"
    assert log.is_file() and log.read_text().strip(), "the failed shard's log says why"
    assert not list(layer_dir(results).rglob(".*.partial"))


# --- what a config edit reruns, under Snakemake's default rerun triggers --------------------------
#
# A finished run is faked: every output of a dry run is created empty, then `--touch` marks every
# job after the embedded model builds as done, which records each job's params, input and code in
# .snakemake/metadata as a real run would. Dry runs on an edited config then show what Snakemake's
# default triggers (mtime, params, input, code, software-env) schedule. Seconds, not minutes.

ALWAYS = {"all"}  # the default target (no output), listed whenever anything is scheduled


def default_trigger_command(results: Path, config: Path, *args: str) -> list[str]:
    return [
        str(SNAKEMAKE),
        *args,
        "--cores",
        "1",
        "--configfile",
        str(config),
        "--config",
        f"results_dir={results}",
    ]


def dry_run_jobs(results: Path, config: Path) -> list[tuple[str, list[str]]]:
    """(rule, outputs) of the jobs a dry run schedules, under the default rerun triggers."""
    done = subprocess.run(
        default_trigger_command(results, config, "-n"),
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return planned_jobs(done.stdout)


def dry_run_rules(results: Path, config: Path) -> set[str]:
    """Rules of the jobs a dry run schedules, under the default rerun triggers."""
    return {rule for rule, _ in dry_run_jobs(results, config)} - ALWAYS


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def reversed_keys(value: Any) -> Any:
    """``value`` with the keys of every mapping in reverse order."""
    if isinstance(value, dict):
        return {key: reversed_keys(value[key]) for key in reversed(list(value))}
    return value


@pytest.fixture(scope="module")
def touched(tmp_path_factory) -> Path:
    """A faked finished run of the full CI config (every rule, with metadata); its results_dir."""
    folder = tmp_path_factory.mktemp("touched")
    return touched_run(folder / "results", write_config(folder / "ci.yaml", CI_CONFIG))


def two_layer_config() -> dict[str, Any]:
    """The CI config with a second layer and the optional twera rule on."""
    config = copy.deepcopy(CI_CONFIG)
    config["models"][MODEL]["layers"] = [LAYER, LAYER + 1]
    config["twera"] = {"enabled": True}
    return config


@pytest.fixture(scope="module")
def touched_two_layers(tmp_path_factory) -> Path:
    """A faked finished run of :func:`two_layer_config`; its results_dir."""
    folder = tmp_path_factory.mktemp("touched2")
    return touched_run(folder / "results", write_config(folder / "ci.yaml", two_layer_config()))


def touched_run(results: Path, config: Path) -> Path:
    """Fake a finished run of ``config`` into ``results`` (every rule, with metadata)."""

    def planned_outputs() -> list[Path]:
        plan = subprocess.run(
            default_trigger_command(results, config, "-n"),
            cwd=ROOT,
            env=ENV,
            capture_output=True,
            text=True,
            check=True,
        )
        return [Path(output) for _, outputs in planned_jobs(plan.stdout) for output in outputs]

    # The embedded models (under resources/, shared by every run) are built for real when
    # missing, never faked: only files under this test's results folder are.
    missing_models = [path for path in planned_outputs() if results not in path.parents]
    if missing_models:
        snakemake(results, *map(str, missing_models))
    for path in planned_outputs():
        assert results in path.parents, f"{path}: only results are faked"
        # Folder outputs: rule cache's per corpus chunk, rule export's delphi runs, rule
        # collect_pairs's MLP pairs (temporary: --touch removes it as a run would).
        folders = path.parts[-2:] == ("export", "delphi") or path.name == "mlp_pairs"
        if "cache_chunks" in path.parts or folders:
            path.mkdir(parents=True, exist_ok=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    subprocess.run(  # -R corpus: every job from corpus on (not the embedded model builds)
        default_trigger_command(results, config, "--touch", "-R", "corpus", "--nolock"),
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        check=True,
    )
    assert dry_run_rules(results, config) == set(), "the faked run must be up to date"
    return results


def edited(tmp_path: Path, edit) -> Path:
    """The CI config with ``edit`` applied, written to a file."""
    config = copy.deepcopy(CI_CONFIG)
    edit(config)
    return write_config(tmp_path / "edited.yaml", config)


def test_a_weightlens_threshold_reruns_only_weightlens_and_what_follows(touched, tmp_path):
    def edit(config):
        config["models"][MODEL]["weightlens"] = {"t_tok": 6.0}

    rules = dry_run_rules(touched, edited(tmp_path, edit))
    assert "weightlens" in rules
    downstream = {
        "gather_weightlens",
        "cluster",
        "explain",
        "evaluate",
        "evaluate_rules",
        "delphi_rules",
        "delphi_llm",
        "summarize",
        "report",
        "export",  # rule export writes every variant's descriptions with the summary's scores
    }
    assert rules <= {"weightlens"} | downstream, rules
    before = {
        "corpus",
        "collect_pairs",
        "train_transcoder",
        "cache",
        "merge_cache",
        "sample",
        "attribution",
    }
    assert not rules & before


def dry_run_text(results: Path, config: Path) -> str:
    """The dry run's text, under the default rerun triggers."""
    done = subprocess.run(
        default_trigger_command(results, config, "-n"),
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stdout


def job_reason(dry_run_output: str, rule: str) -> str:
    """The ``reason:`` line of the (one) job of ``rule`` in a dry run's text."""
    for block in re.split(r"\n(?=(?:local)?rule \S+:)", dry_run_output):
        if re.match(rf"(?:local)?rule {rule}:", block):
            found = re.search(r"^\s+reason: (.*)$", block, re.MULTILINE)
            return found.group(1) if found else ""
    raise AssertionError(f"no {rule} job in the dry run")


def test_an_optimizer_key_reruns_training_not_the_corpus_and_no_pairs_for_it(touched, tmp_path):
    """A training key is a param of rule train_transcoder only. Rule collect_pairs runs again
    only because its folder is temporary (gone once training read it, in a real run as in this
    faked one): its reason is the missing folder, not its params."""

    def edit(config):
        config["models"][MODEL]["transcoders"]["steps"] = 150

    text = dry_run_text(touched, edited(tmp_path, edit))
    rules = {rule for rule, _ in planned_jobs(text)} - ALWAYS
    assert "train_transcoder" in rules, rules
    assert "Params have changed" in job_reason(text, "train_transcoder")
    assert not rules & {"corpus", "clean_loss"}, rules
    reason = job_reason(text, "collect_pairs")
    assert "Missing output files" in reason and "Params have changed" not in reason, reason


def test_train_contexts_reruns_the_pairs_and_training_not_the_corpus(touched, tmp_path):
    def edit(config):
        config["models"][MODEL]["transcoders"]["train_contexts"] = 100

    text = dry_run_text(touched, edited(tmp_path, edit))
    planned = [rule for rule, _ in planned_jobs(text)]
    assert {"collect_pairs", "train_transcoder"} <= set(planned), planned
    assert not set(planned) & {"corpus", "clean_loss"}, planned
    assert planned.count("collect_pairs") == 1  # one per model, every layer's pairs


def test_an_explain_prompt_key_reruns_only_explain_and_what_follows(touched, tmp_path):
    def edit(config):
        config["explain"]["prompt"] = {"n_maxact": 3}

    rules = dry_run_rules(touched, edited(tmp_path, edit))
    scorers = {"evaluate", "evaluate_rules", "delphi_rules", "delphi_llm"}  # all read explanations
    assert rules == {"explain", *scorers, "summarize", "report", "export"}, rules


def test_an_evaluate_key_reruns_only_evaluate_summary_and_report(touched, tmp_path):
    def edit(config):
        config["evaluate"]["features_per_shard"] = 2

    rules = dry_run_rules(touched, edited(tmp_path, edit))
    # delphi_llm rates the same drawn features as evaluate; the exact delphi scores cover all
    assert rules == {"evaluate", "delphi_llm", "summarize", "report", "export"}, rules


def test_the_shared_evaluate_seed_reruns_both_raters_and_nothing_before(touched, tmp_path):
    def edit(config):
        config["evaluate"]["seed"] = 1

    rules = dry_run_rules(touched, edited(tmp_path, edit))
    raters = {"evaluate", "evaluate_rules", "delphi_rules", "delphi_llm"}  # the seed draws examples
    assert rules == {*raters, "summarize", "report", "export"}, rules


def test_a_rule_rater_key_reruns_only_the_rule_rater_summary_and_report(touched, tmp_path):
    def edit(config):
        config["rules"]["n_synthetic"] = 5

    rules = dry_run_rules(touched, edited(tmp_path, edit))
    assert rules == {"evaluate_rules", "summarize", "report", "export"}, rules


def test_a_delphi_example_key_reruns_both_delphi_scorers_and_nothing_else(touched, tmp_path):
    def edit(config):
        config["scores"]["n_non_activating"] = 4

    rules = dry_run_rules(touched, edited(tmp_path, edit))
    assert rules == {"delphi_rules", "delphi_llm", "summarize", "report", "export"}, rules


def test_a_delphi_llm_only_key_reruns_only_the_llm_rated_scores(touched, tmp_path):
    def edit(config):
        config["scores"]["max_tokens"] = 17  # the LLM's answers only; the rules never see it

    rules = dry_run_rules(touched, edited(tmp_path, edit))
    assert rules == {"delphi_llm", "summarize", "report", "export"}, rules


def test_server_and_resource_keys_rerun_nothing(touched, tmp_path):
    """How the LLM server runs and how many threads a job gets change no answer: no rerun."""

    def edit(config):
        config["llm"] = {
            "concurrency": 3,
            "kv_cache_gib": 1,
            "reserved_cpus": 1,
            "timeout_s": 77,
            "max_retries": 1,
            "startup_timeout_s": 99,
        }
        config["evaluate"]["threads"] = 0

    assert dry_run_rules(touched, edited(tmp_path, edit)) == set()


def test_an_llm_answer_key_reruns_the_explanations_and_what_follows(touched, tmp_path):
    def edit(config):
        config["llm"] = {"max_tokens": 123}

    rules = dry_run_rules(touched, edited(tmp_path, edit))
    scorers = {"evaluate", "evaluate_rules", "delphi_rules", "delphi_llm"}
    assert rules == {"explain", *scorers, "summarize", "report", "export"}, rules


def test_the_same_config_with_keys_reordered_reruns_nothing(touched, tmp_path):
    config = write_config(tmp_path / "reordered.yaml", reversed_keys(CI_CONFIG))
    assert list(yaml.safe_load(config.read_text())) != list(CI_CONFIG)
    assert dry_run_rules(touched, config) == set()


def test_a_twera_key_reruns_only_twera_and_the_report(touched_two_layers, tmp_path):
    config = two_layer_config()
    config["twera"]["top_k"] = 5
    rules = dry_run_rules(touched_two_layers, write_config(tmp_path / "top_k.yaml", config))
    assert rules == {"twera", "report"}, rules


def test_a_weightlens_threshold_does_not_rerun_twera(touched_two_layers, tmp_path):
    config = two_layer_config()
    config["models"][MODEL]["weightlens"] = {"t_tok": 6.0}
    rules = dry_run_rules(touched_two_layers, write_config(tmp_path / "t_tok.yaml", config))
    assert "weightlens" in rules and "twera" not in rules, rules


def test_naming_features_reruns_only_the_shards_they_are_in(touched, tmp_path):
    """select_features gets only its shard's named features as params: naming features of the
    first shard reruns that shard's jobs (and the gathers), nothing of the second."""

    def edit(config):
        config["models"][MODEL]["features"] = {LAYER: [5, "7-9"]}

    planned = dry_run_jobs(touched, edited(tmp_path, edit))
    selects = [outputs for rule, outputs in planned if rule == "select_features"]
    assert selects == [[str(artifact(touched, "features", SHARDS[0]))]]
    for rule, outputs in planned:
        assert not any(SHARDS[1] in output for output in outputs), (rule, outputs)
    rules = {rule for rule, _ in planned} - ALWAYS
    assert {"attribution", "cluster", "explain", "evaluate"} <= rules, rules
    assert not rules & {
        "corpus",
        "collect_pairs",
        "train_transcoder",
        "cache",
        "merge_cache",
        "sample",
    }, rules


def test_an_import_runs_its_rows_and_their_scores_and_reruns_none_of_ours(touched, tmp_path):
    """An imported variant (models.<m>.imports) is read by its own job and scored by its own
    evaluate jobs; no job of our variants reruns."""
    import json

    export = tmp_path / "theirs.json"
    source = f"{LAYER}-circuit-insights-transcoder-256"  # the CI transcoder's default source set
    entry = {"modelId": MODEL, "layer": source, "index": "5", "description": "cats"}
    export.write_text(json.dumps([entry]))

    def edit(config):
        config["models"][MODEL]["imports"] = {
            "theirs": {"format": "neuronpedia", "path": str(export)}
        }

    planned = dry_run_jobs(touched, edited(tmp_path, edit))
    rules = {rule for rule, _ in planned} - ALWAYS
    ours = {"import_explanations", "evaluate", "delphi_llm"}  # delphi_llm rates imports too
    assert ours <= rules, rules
    assert rules <= {*ours, "summarize", "report", "export"}, rules
    evaluated = [o for rule, outputs in planned if rule == "evaluate" for o in outputs]
    assert len(evaluated) == len(SHARDS)
    assert all("/evaluation/theirs/" in output for output in evaluated), evaluated
