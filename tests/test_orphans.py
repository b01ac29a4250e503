"""A job stops when the Snakemake process that started it is killed (kill -9)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from circuit_insights.pipeline.orphans import runs_program


def test_only_the_snakemake_program_counts_not_a_path_under_dot_snakemake():
    assert runs_program(["/venv/bin/python3", "/venv/bin/snakemake", "--cores", "2"], "snakemake")
    assert runs_program(["python", "-m", "snakemake", "-n"], "snakemake")
    assert not runs_program(["python", "/w/.snakemake/scripts/tmp.cache.py"], "snakemake")
    assert not runs_program(["bash", "-c", "snakemake --cores 1"], "snakemake")


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc (psutil's process tree)")
def test_a_job_whose_snakemake_is_killed_stops(tmp_path):
    # A stand-in "snakemake" program (a file named snakemake) starts a job that configures its
    # logging as every job script does and then works for a minute; the parent is killed -9.
    job = tmp_path / "job.py"
    job.write_text(
        textwrap.dedent(
            f"""
            import time
            from circuit_insights.pipeline.logs import configure_logging
            configure_logging({str(tmp_path / "job.log")!r})
            open({str(tmp_path / "started")!r}, "w").close()
            time.sleep(60)
            open({str(tmp_path / "finished")!r}, "w").close()
            """
        )
    )
    parent = tmp_path / "snakemake"
    parent.write_text(
        f"import subprocess, sys\nsubprocess.Popen([sys.executable, {str(job)!r}]).wait()\n"
    )
    started = subprocess.Popen([sys.executable, str(parent)], start_new_session=True)
    deadline = time.monotonic() + 60
    while not (tmp_path / "started").exists():
        assert time.monotonic() < deadline, "the job did not start"
        time.sleep(0.2)
    children = subprocess.run(
        ["pgrep", "-P", str(started.pid)], capture_output=True, text=True
    ).stdout.split()
    assert len(children) == 1
    child = int(children[0])
    os.kill(started.pid, signal.SIGKILL)
    started.wait()
    deadline = time.monotonic() + 20
    while Path(f"/proc/{child}").exists() and _state(child) != "Z":
        assert time.monotonic() < deadline, "the orphaned job kept running"
        time.sleep(0.2)
    assert not (tmp_path / "finished").exists()
    assert "is gone: stopping the job" in (tmp_path / "job.log").read_text()


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return "X"
