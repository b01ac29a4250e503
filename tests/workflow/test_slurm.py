"""The CI config through the SLURM profile on a real one-node cluster (tests/workflow/slurm_cluster.py).

Skipped only where slurmctld is not installed (CI installs it: docs/scale-out.md); any other missing
piece is a failure that names it. The cluster is stopped (pid files) whatever happens.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from circuit_insights.data.shards import make_shards
from tests.workflow.slurm_cluster import SlurmCluster, start_cluster

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("slurmctld") is None,
        reason="slurmctld is not installed (apt-get install -y --no-install-recommends "
        "slurmctld slurmd slurm-client munge; pip install snakemake-executor-plugin-slurm==2.8.0)",
    ),
]

ROOT = Path(__file__).resolve().parents[2]
SNAKEMAKE = Path(sys.executable).parent / "snakemake"
MODEL = "gemma-3-270m"
TINY = {
    "corpus": {"max_contexts": 120},
    "models": {
        MODEL: {"transcoders": {"n_features": 128, "train_contexts": 80, "steps": 100}},
    },
    "cache": {"shard_size": 64},  # two shards: the per-shard rules go out as job arrays
    "attribution": {"samples_per_feature": 4},
    "explain": {"variants": ["maxact", "weightlens_rule"]},
    # threads 0: the job counts for no core here, and still asks SLURM for one CPU
    "evaluate": {"variants": ["weightlens_rule"], "threads": 0},
}
"""The CI config made smaller still: every rule runs as a SLURM job, the LLM ones included."""
TIMEOUT_S = 1500
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL"}


def _merged(base: dict, changes: dict) -> dict:
    merged = dict(base)
    for key, value in changes.items():
        merged[key] = _merged(base.get(key, {}), value) if isinstance(value, dict) else value
    return merged


CONFIG = _merged(yaml.safe_load((ROOT / "config/ci.yaml").read_text()), TINY)
LAYER = CONFIG["models"][MODEL]["layers"][0]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> SlurmCluster:
    started = start_cluster(tmp_path_factory.mktemp("slurm"))
    try:
        yield started
    finally:
        daemons = started.daemon_pids()
        started.stop()
        for name, pid in daemons.items():
            assert pid is None or not _runs(pid), f"{name} (pid {pid}) still runs after stop()"


def _runs(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_ci_config_runs_to_the_end_through_the_slurm_profile(cluster, tmp_path) -> None:
    results = tmp_path / "results"
    config = tmp_path / "slurm-ci.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    command = [
        str(SNAKEMAKE),
        "--workflow-profile",
        "profiles/slurm",
        "--configfile",
        str(config),
        "--rerun-triggers",
        "mtime",
        "--slurm-logdir",
        str(tmp_path / "slurm_logs"),
        "--config",
        f"results_dir={results}",
    ]
    started = time.perf_counter()
    done = cluster.run(
        command,
        cwd=ROOT,
        env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"},
        timeout=TIMEOUT_S,
    )
    seconds = time.perf_counter() - started
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"snakemake failed:\n{output[-6000:]}\n{cluster.logs()}"
    print(f"CI config through SLURM: {seconds:.0f} s")

    layer = results / MODEL / f"layer{LAYER}"
    shards = [
        shard.name
        for shard in make_shards(
            CONFIG["models"][MODEL]["transcoders"]["n_features"],
            CONFIG["cache"]["shard_size"],
        )
    ]
    for kind in ("activations", "maxima", "samples", "weightlens", "explanations"):
        assert sorted(p.stem for p in (layer / kind).glob("*.parquet")) == shards, kind
    assert (results / "report" / "index.html").is_file()
    assert (layer / "transcoder" / "report.json").is_file()
    assert not list(results.rglob("*.partial"))
    # To the end: a local dry run of the same config finds nothing left to do.
    left = subprocess.run(
        [
            str(SNAKEMAKE),
            "-n",
            "--cores",
            "1",
            "--configfile",
            str(config),
            "--rerun-triggers",
            "mtime",
            "--config",
            f"results_dir={results}",
        ],
        cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
    )
    assert left.returncode == 0 and "Nothing to be done" in left.stdout + left.stderr, left.stdout

    # Every rule ran as a SLURM job; the shards of a rule went out as job arrays.
    assert "Submitted array job" in output, output[-3000:]
    deadline = time.monotonic() + 60  # a job's epilog may still run (COMPLETING)
    while True:
        queue = cluster.run(["squeue", "--states=all", "--noheader", "--format=%i|%T"])
        states = dict(line.split("|") for line in queue.stdout.split())
        if set(states.values()) <= FINAL_STATES or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert states and set(states.values()) == {"COMPLETED"}, states
    assert sum("_" in job for job in states) >= len(shards), states  # array tasks: <id>_<task>
