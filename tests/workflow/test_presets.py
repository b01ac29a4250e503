"""The presets of config/presets/: valid configs built from the registry, and ``snakemake -n`` on
each builds the whole DAG (every layer, every shard) quickly and without the network."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from circuit_insights.data.cache_chunks import make_chunks
from circuit_insights.data.shards import make_shards
from circuit_insights.pipeline.config import load_config
from circuit_insights.pipeline.preflight import check_models
from circuit_insights.transcoders.registry import is_hf_reference, load_registry

ROOT = Path(__file__).resolve().parents[2]
SNAKEMAKE = Path(sys.executable).parent / "snakemake"
SCHEMA = ROOT / "workflow/schemas/config.schema.yaml"
PRESETS = {
    "gpt2-dunefsky": "gpt2-dunefsky",
    "gemma-2-2b-gemmascope": "gemma-2-2b-gemmascope",
    "llama-3.2-1b-skip": "llama-3.2-1b-skip",
    "gemma-3-gemmascope2": "gemma-3-1b-gemmascope2",
}
"""Preset file stem -> its registry entry."""
DRY_RUN_LIMIT_S = {"gemma-2-2b-gemmascope": 60}
"""Acceptance: seconds a dry run of the preset may take on the 2-core development machine."""
DRY_RUN_TIMEOUT_S = 600
OFFLINE_EXPLAINER = ROOT / "tests/workflow/offline-explainer.yaml"
"""Merged into a preset's dry run: the explainer's server URL (a preset's explainer is a GPU
server of the user's own) and no network checks at start (the run is offline)."""


def preset_path(stem: str) -> Path:
    return ROOT / "config" / "presets" / f"{stem}.yaml"


def test_every_preset_is_tested() -> None:
    assert sorted(p.stem for p in (ROOT / "config/presets").glob("*.yaml")) == sorted(PRESETS)


@pytest.mark.parametrize("stem", sorted(PRESETS))
def test_preset_is_valid_and_matches_its_registry_entry(stem: str) -> None:
    config = load_config(preset_path(stem), SCHEMA)
    release = load_registry()[PRESETS[stem]]
    (name, block), *others = config["models"].items()
    assert not others, "one model per preset"
    expected = release.model_config()
    for key, value in expected.items():
        if key != "transcoders":
            assert block[key] == value, key
    for key, value in expected["transcoders"].items():
        assert block["transcoders"][key] == value, f"transcoders.{key}"
    assert block["layers"] == list(range(release.n_layers))
    assert is_hf_reference(block["transcoders"]["path"])
    assert "{layer}" in block["transcoders"]["path"]
    check_models(config, network=False)  # hub ids: form only, no network


def dry_run(
    stem: str, results: Path, *config: str
) -> tuple[subprocess.CompletedProcess[str], float]:
    """``snakemake -n`` of one preset, offline (``config``: more ``KEY=VALUE`` for
    ``--config``); returns the run and its wall time."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    command = [
        str(SNAKEMAKE),
        "-n",
        "--quiet",
        "rules",
        "--cores",
        "2",
        "--configfile",
        str(preset_path(stem)),
        str(OFFLINE_EXPLAINER),
        # config/config.yaml would otherwise be merged in (its embedded model added to the preset's)
        "--replace-workflow-config",
        "--rerun-triggers",
        "mtime",
        "--config",
        f"results_dir={results}",
        *config,
    ]
    started = time.perf_counter()
    done = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=DRY_RUN_TIMEOUT_S
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise AssertionError(f"dry run failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
    return done, seconds


def job_counts(output: str) -> dict[str, int]:
    """The ``Job stats`` table of a dry run, rule -> count."""
    table = output.split("Job stats:", 1)[1].split("\n\n", 1)[0]
    return {
        match.group(1): int(match.group(2))
        for match in re.finditer(r"^(\S+)\s+(\d+)\s*$", table, re.MULTILINE)
    }


@pytest.mark.slow
@pytest.mark.parametrize("stem", sorted(PRESETS))
def test_dry_run_builds_every_layer_and_shard_offline(tmp_path, stem: str) -> None:
    release = load_registry()[PRESETS[stem]]
    config = yaml.safe_load(preset_path(stem).read_text())
    (model,) = config["models"]
    validated = load_config(preset_path(stem), SCHEMA)
    shard_size = validated["cache"]["shard_size"]
    n_chunks = len(
        make_chunks(validated["corpus"]["max_contexts"], validated["cache"]["chunk_contexts"])
    )
    n_shards = len(make_shards(release.n_features, shard_size))

    done, seconds = dry_run(stem, tmp_path / "results")

    counts = job_counts(done.stdout)
    n_layers, per_layer = release.n_layers, release.n_layers * n_shards
    assert counts["corpus"] == 1 and counts["all"] == 1, counts
    assert "build_embedded_llm" not in counts, "a GPU preset never builds the 135M CPU explainer"
    assert counts["cache"] == n_chunks and counts["merge_cache"] == per_layer, counts
    assert counts["sample"] == per_layer, counts
    stages = {rule: count for rule, count in counts.items() if rule != "total"}
    for rule, count in stages.items():  # every stage: once, per layer, or per (layer, shard, ...)
        assert count in (1, n_layers) or count % per_layer == 0, (rule, count)
    assert counts["total"] == sum(stages.values())
    assert not (tmp_path / "results").exists(), "a dry run writes nothing"
    print(f"{stem}: {counts['total']} jobs, dry run {seconds:.1f} s")
    if stem in DRY_RUN_LIMIT_S:  # reported, not asserted: these machines are noisy
        print(f"{stem}: target {DRY_RUN_LIMIT_S[stem]} s, measured {seconds:.1f} s")


@pytest.mark.slow
def test_gemma_2_2b_at_the_papers_scale_dry_runs_in_chunks(tmp_path) -> None:
    """24M tokens (375,000 contexts of 64) in chunks of 16,384 contexts: 23 cache jobs, each one
    forward pass for all 26 layers, and 26 x 32 merges; the DAG is built within the target."""
    stem = "gemma-2-2b-gemmascope"
    release = load_registry()[PRESETS[stem]]
    corpus = 'corpus={"max_contexts": 375000, "context_length": 64}'
    cache = 'cache={"chunk_contexts": 16384, "shard_size": 512}'
    done, seconds = dry_run(stem, tmp_path / "results", corpus, cache)
    counts = job_counts(done.stdout)
    n_shards = len(make_shards(release.n_features, 512))
    assert counts["cache"] == 23, counts
    assert counts["merge_cache"] == release.n_layers * n_shards, counts
    assert counts["sample"] == release.n_layers * n_shards, counts
    print(f"{stem} at 24M tokens: {counts['total']} jobs, dry run {seconds:.1f} s")
    print(f"{stem} at 24M tokens: target {DRY_RUN_LIMIT_S[stem]} s, measured {seconds:.1f} s")
