"""Progress lines of long loops (``circuit_insights.pipeline.logs.Progress``) and their use."""

from __future__ import annotations

import logging
import re

import pytest

from circuit_insights.core.progress import Progress
from circuit_insights.explain.run import explain_shard
from circuit_insights.explain.variants import VARIANTS
from tests.test_explain import FakeBackend, echo_answer, inputs  # noqa: F401 (fixture)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_line_every_interval_with_count_rate_and_eta():
    clock = Clock()
    progress = Progress(
        "explain layer 3", 120, unit="requests", interval_s=30, clock=clock, heartbeat=False
    )
    progress.update(10)
    clock.now += 10
    progress.update(10)
    assert progress.lines == []  # less than 30 s since the start: silent
    clock.now += 20
    progress.update(20)  # 40 of 120 after 30 s
    assert len(progress.lines) == 1
    line = progress.lines[0]
    assert "40 / 120 requests (33%)" in line
    assert "1.33 requests/s" in line
    assert "ETA 1 min 0 s" in line  # 80 left at 4/3 per second
    clock.now += 5
    progress.update(1)
    assert len(progress.lines) == 1  # the next one 30 s after the last


def test_counters_with_and_without_totals():
    clock = Clock()
    progress = Progress("x", 4, totals={"features": 2}, clock=clock, heartbeat=False)
    clock.now += 10
    progress.update(2, features=1, tokens=500)
    line = progress.message()
    assert "features 1 / 2" in line
    assert "tokens 500 (50/s)" in line


def test_the_heartbeat_logs_while_the_loop_waits():
    clock = Clock()
    progress = Progress("evaluate", 3, unit="descriptions", clock=clock, heartbeat=False)
    assert not progress.tick()
    clock.now += 31  # one long LLM batch: no update for 31 s
    assert progress.tick()
    assert "0 / 3 descriptions" in progress.lines[-1]
    assert "ETA unknown" in progress.lines[-1]
    assert not progress.tick()


def test_without_total_no_eta_and_close_logs_the_last_line(caplog):
    clock = Clock()
    with caplog.at_level(logging.INFO, logger="circuit_insights.progress"):
        with Progress("cache", unit="contexts", clock=clock) as progress:
            clock.now += 2
            progress.update(8)
    assert progress._thread is None
    assert "ETA" not in progress.lines[-1]
    assert "8 contexts, 4.00 contexts/s" in progress.lines[-1]
    assert any("cache: 8 contexts" in r.getMessage() for r in caplog.records)


def test_bad_interval_is_an_error():
    with pytest.raises(ValueError, match="interval_s"):
        Progress("x", interval_s=0)


def test_explain_reports_requests_features_and_server_tokens(inputs, caplog):  # noqa: F811
    backend = FakeBackend(echo_answer)
    with caplog.at_level(logging.INFO, logger="circuit_insights.progress"):
        explain_shard(backend, inputs, VARIANTS)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("explain ")]
    describe = [line for line in lines if "describe requests" in line]
    merge = [line for line in lines if "merge requests" in line]
    assert describe and merge
    # 16 first-round requests over the fixture's features, every one answered; the fake server
    # reports 100 prompt and 10 completion tokens per request.
    assert re.search(r"16 / 16 requests \(100%\)", describe[-1])
    n_features = len({f for f in inputs})
    assert f"features {n_features} / {n_features}" in describe[-1]
    assert "prompt_tokens 1600" in describe[-1]
    assert "completion_tokens 160" in describe[-1]
    assert "fake-llm" in describe[-1]
