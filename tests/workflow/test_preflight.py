"""The preflight through Snakemake itself: bad input stops the workflow while the DAG is built,
before any job runs, with one message (no traceback) naming the config key and the thing at fault.
Plus the library checks behind it, on small files built here."""

from __future__ import annotations

import functools
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from circuit_insights.core.errors import InputError
from circuit_insights.data.shards import MAX_SHARDS_PER_LAYER, make_shards, parse_shard
from circuit_insights.models.hub import hub_config, is_hub_id, read_config_json
from circuit_insights.pipeline import preflight
from circuit_insights.pipeline.preflight import hub as hub_checks
from circuit_insights.pipeline.preflight import models as model_checks
from circuit_insights.pipeline.preflight import transcoders as transcoder_checks

ROOT = Path(__file__).resolve().parents[2]
SNAKEMAKE = Path(sys.executable).parent / "snakemake"
MODEL = "gemma-3-270m"


def closed_port() -> int:
    """A localhost port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ci_config(tmp_path: Path, **blocks) -> Path:
    """config/ci.yaml with top-level blocks merged one level deep (``models`` replaced)."""
    config = yaml.safe_load((ROOT / "config/ci.yaml").read_text())
    for key, value in blocks.items():
        if isinstance(value, dict) and key != "models":
            config.setdefault(key, {}).update(value)
        else:
            config[key] = value
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def ci_model(**changes) -> dict:
    """The CI config's model block with ``changes`` (``transcoders`` merged)."""
    block = yaml.safe_load((ROOT / "config/ci.yaml").read_text())["models"][MODEL]
    transcoders = {**block["transcoders"], **changes.pop("transcoders", {})}
    return {MODEL: {**block, **changes, "transcoders": transcoders}}


def start(
    tmp_path: Path,
    config: Path,
    results: Path | None = None,
    *,
    options: tuple[str, ...] = (),
    config_args: tuple[str, ...] = (),
    **env: str,
):
    """``snakemake`` (not a dry run: nothing may get as far as a job) on ``config``, offline;
    ``options`` go before the config (``-n`` for a dry run), ``config_args`` after --config."""
    results = results or tmp_path / "results"
    environment = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HUB_CACHE": str(tmp_path / "hub-cache"),  # an empty cache: nothing resolves from it
        **env,
    }
    command = [
        str(SNAKEMAKE),
        *options,
        "--cores",
        "1",
        "--workflow-profile",
        "none",
        "--configfile",
        str(config),
        "--config",
        f"results_dir={results}",
        *config_args,
    ]
    return subprocess.run(
        command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=300
    )


def assert_stopped_at_start(done: subprocess.CompletedProcess[str], *names: str) -> str:
    """Exit status 1, one error line naming every one of ``names``, no traceback, no job."""
    output = done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert done.returncode == 1, output[-3000:]
    assert len(errors) == 1, output[-3000:]
    for name in names:
        assert name in errors[0], (name, errors[0])
    assert "Traceback" not in output and 'File "' not in output, output[-3000:]
    assert "Job stats" not in output and "rule " not in output, output[-3000:]
    return errors[0]


def test_unreachable_llm_url(tmp_path):
    url = f"http://127.0.0.1:{closed_port()}/v1"
    done = start(tmp_path, ci_config(tmp_path, llm={"url": url, "model": "explainer"}))
    assert_stopped_at_start(done, "llm.url", url, "unreachable")
    assert not (tmp_path / "results").exists()


def test_missing_transcoder_path(tmp_path):
    path = tmp_path / "transcoders" / "layer{layer}"
    model = ci_model(
        transcoders={"kind": "pretrained", "format": "native", "path": str(path), "top_k": None}
    )
    done = start(tmp_path, ci_config(tmp_path, models=model))
    layer = model[MODEL]["layers"][0]
    assert_stopped_at_start(
        done, f"models.{MODEL}.transcoders.path", str(path).replace("{layer}", str(layer))
    )


def test_hub_model_offline_says_offline_not_unknown(tmp_path):
    done = start(tmp_path, ci_config(tmp_path, models=ci_model(source="gpt2")))
    error = assert_stopped_at_start(
        done, f"models.{MODEL}.source", "cannot reach the hub to resolve gpt2 (offline?)"
    )
    assert "unknown" not in error


def test_binary_corpus_file_is_named(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(b"PK\x03\x04\x00\x00" + bytes(range(256)) * 4)
    done = start(tmp_path, ci_config(tmp_path, corpus={"source": "files", "paths": [str(corpus)]}))
    assert_stopped_at_start(done, "corpus.paths", str(corpus), "binary")


def test_model_config_that_is_not_json_is_named(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text('{"num_hidden_layers": 4,')
    (folder / "model.safetensors").write_bytes(b"")
    done = start(tmp_path, ci_config(tmp_path, models=ci_model(source=str(folder))))
    assert_stopped_at_start(done, f"models.{MODEL}.source", str(folder / "config.json"), "JSON")


def test_results_dir_that_is_a_file(tmp_path):
    results = tmp_path / "results.txt"
    results.write_text("not a folder\n")
    done = start(tmp_path, ci_config(tmp_path), results=results)
    assert_stopped_at_start(done, "results_dir", str(results), "folder")
    assert results.read_text() == "not a folder\n"


def dry_run_ok(done: subprocess.CompletedProcess[str]) -> str:
    """A dry run that built the DAG: exit status 0, no error; its stdout."""
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "This was a dry-run" in done.stdout, done.stdout[-3000:]
    return done.stdout


def planned(stdout: str, rule: str) -> int:
    """Jobs of ``rule`` in a dry run's ``Job stats`` table."""
    match = re.search(rf"^{re.escape(rule)}\s+(\d+)\s*$", stdout, re.MULTILINE)
    return int(match.group(1)) if match else 0


# --- llm.url: an OpenAI-compatible model list naming llm.model ---------------------------------


class _Answer(BaseHTTPRequestHandler):
    """Answers every GET with the server's ``answer``: (status, content type, body)."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        status, content_type, body = self.server.answer  # type: ignore[attr-defined]
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


class _NoGet(BaseHTTPRequestHandler):
    """http.server's handler without do_GET: every GET gets its own 501 page."""

    def log_message(self, *args) -> None:
        pass


class _Static(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@contextmanager
def http_server(handler, answer=None) -> Iterator[str]:
    """A real HTTP server on 127.0.0.1 in a thread; yields its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.answer = answer  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


MODEL_LIST = '{"object": "list", "data": [{"id": "explainer", "object": "model"}]}'


@pytest.mark.parametrize(
    ("server", "status", "text"),
    [
        ("static", 404, "File not found"),  # any web server: the URL without /v1
        ("no-get", 501, "Unsupported method"),  # http.server without GET
        ("html", 200, "'Welcome to nginx!'"),  # 200, not JSON
        ("no-data", 200, '{"models": ["explainer"]}'),  # JSON of another shape
        ("other-model", 200, '"id": "another"'),  # a model list without llm.model
    ],
)
def test_an_llm_url_that_is_no_openai_server_listing_the_model_is_refused(
    tmp_path, server, status, text
):
    handlers = {
        "static": (functools.partial(_Static, directory=str(tmp_path)), None),
        "no-get": (_NoGet, None),
        "html": (_Answer, (200, "text/html", "<html><body>Welcome to nginx!</body></html>")),
        "no-data": (_Answer, (200, "application/json", '{"models": ["explainer"]}')),
        "other-model": (
            _Answer,
            (200, "application/json", MODEL_LIST.replace("explainer", "another")),
        ),
    }
    handler, answer = handlers[server]
    with http_server(handler, answer) as base:
        url = f"{base}/v1"
        done = start(tmp_path, ci_config(tmp_path, llm={"url": url, "model": "explainer"}))
    assert_stopped_at_start(done, "llm.url", f"GET {url}/models", f"HTTP {status}", text)


def test_an_openai_model_list_naming_the_model_passes(tmp_path):
    with http_server(_Answer, (200, "application/json", MODEL_LIST)) as base:
        llm = {"url": f"{base}/v1/", "model": "explainer", "api_key_env": ""}
        preflight.check_llm(llm, network=True)
        with pytest.raises(InputError, match="'llm.api_key_env': environment variable"):
            preflight.check_llm({**llm, "api_key_env": "CI_NO_SUCH_KEY_VARIABLE"}, network=True)
        done = start(
            tmp_path,
            ci_config(tmp_path, llm={"url": llm["url"], "model": "explainer"}),
            options=("-n",),
        )
    dry_run_ok(done)


# --- scale: shards per layer ---------------------------------------------------------------------


def test_an_absurd_transcoder_width_is_refused_with_the_shard_count(tmp_path):
    model = ci_model(transcoders={"n_features": 1_000_000_000})
    started = time.perf_counter()
    done = start(tmp_path, ci_config(tmp_path, models=model))
    assert time.perf_counter() - started < 60
    error = assert_stopped_at_start(
        done, f"models.{MODEL}.transcoders.n_features", "7812500 shards", "cache.shard_size"
    )
    assert str(MAX_SHARDS_PER_LAYER) in error


def test_a_million_feature_transcoder_builds_a_dag_whose_shards_parse(tmp_path):
    n_features, shard_size = 1_048_576, 65_536
    model = ci_model(transcoders={"n_features": n_features})
    config = ci_config(tmp_path, models=model, cache={"shard_size": shard_size})
    stdout = dry_run_ok(start(tmp_path, config, options=("-n",)))
    expected = [shard.name for shard in make_shards(n_features, shard_size)]
    assert expected[-1] == "f983040-1048576" and expected[0] == "f000000-065536"
    named = set(re.findall(r"/(f\d+-\d+)\.parquet", stdout))
    assert named == set(expected)
    assert all(parse_shard(name).name == name for name in named)
    assert planned(stdout, "sample") == len(expected)


# --- the corpus, --config values, devices, transcoder folders ------------------------------------


def test_a_corpus_folder_is_accepted_and_an_empty_one_refused(tmp_path):
    folder = tmp_path / "texts"
    folder.mkdir()
    corpus = {"source": "files", "paths": [str(folder)]}
    done = start(tmp_path, ci_config(tmp_path, corpus=corpus))
    assert_stopped_at_start(done, "corpus.paths", str(folder), "holds no corpus file")
    (folder / "a.txt").write_text("Some text of a document.\n" * 50)
    dry_run_ok(start(tmp_path, ci_config(tmp_path, corpus=corpus), options=("-n",)))


def test_nested_config_values_from_the_command_line_are_typed_by_the_schema(tmp_path):
    config = ci_config(tmp_path)
    nested = ('cache={"shard_size": 64}', 'preflight={"network": false}')
    stdout = dry_run_ok(start(tmp_path, config, options=("-n",), config_args=nested))
    assert planned(stdout, "sample") == 256 // 64
    done = start(tmp_path, config, config_args=('cache={"shard_size": "big"}',))
    assert_stopped_at_start(done, "cache.shard_size", "'big' is not of type 'integer'")


def test_an_unknown_device_is_refused(tmp_path):
    done = start(tmp_path, ci_config(tmp_path, models=ci_model(device="tpu9")))
    assert_stopped_at_start(done, f"models.{MODEL}.device", "'tpu9'", "unknown torch device")


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_refused_when_the_jobs_run_here(tmp_path):
    config = ci_config(tmp_path, models=ci_model(device="cuda"))
    done = start(tmp_path, config)
    assert_stopped_at_start(done, f"models.{MODEL}.device", "'cuda'", "no CUDA GPU")
    dry_run_ok(start(tmp_path, config, options=("-n",)))  # a dry run plans GPU jobs anywhere


def test_a_transcoder_folder_without_its_weights_is_refused(tmp_path):
    folder = tmp_path / "transcoders" / "layer3"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    path = str(tmp_path / "transcoders" / "layer{layer}")
    model = ci_model(transcoders={"kind": "pretrained", "format": "native", "path": path})
    done = start(tmp_path, ci_config(tmp_path, models=model))
    assert_stopped_at_start(
        done, f"models.{MODEL}.transcoders.path", str(folder), "no transcoder.safetensors"
    )


def test_train_contexts_beyond_the_caching_set_are_refused(tmp_path):
    model = ci_model(transcoders={"train_contexts": 1000})
    done = start(tmp_path, ci_config(tmp_path, models=model))
    assert_stopped_at_start(done, f"models.{MODEL}.transcoders.train_contexts", "holds at most 192")


def test_a_results_dir_that_cannot_be_created_is_named(tmp_path):
    results = Path("/proc/circuit-insights-results")
    done = start(tmp_path, ci_config(tmp_path), results=results)
    assert_stopped_at_start(done, "results_dir", str(results), "cannot be created")


# --- the LLM server's environment ---------------------------------------------------------------


def test_a_missing_llm_server_python_is_refused_when_jobs_would_start_the_server(tmp_path):
    python = tmp_path / "venv-llm" / "bin" / "python"
    config = ci_config(tmp_path, llm={"server_python": str(python)})
    done = start(tmp_path, config)
    assert_stopped_at_start(done, "llm.server_python", str(python), "does not exist")
    dry_run_ok(start(tmp_path, config, options=("-n",)))  # a dry run starts no server


def test_an_llm_server_python_without_vllm_is_refused(tmp_path):
    config = ci_config(tmp_path, llm={"server_python": sys.executable})
    done = start(tmp_path, config)
    assert_stopped_at_start(done, "llm.server_python", sys.executable, "has no vllm")


# --- the hub: offline, unreachable -------------------------------------------------------------


def test_an_uncached_hf_transcoder_offline_is_refused_at_start(tmp_path):
    path = "hf://nobody/no-such-transcoders/layer_{layer}.safetensors"
    model = ci_model(transcoders={"kind": "pretrained", "format": "circuit_tracer", "path": path})
    done = start(tmp_path, ci_config(tmp_path, models=model))
    assert_stopped_at_start(
        done, f"models.{MODEL}.transcoders.path", "nobody/no-such-transcoders", "local hub cache"
    )


UNREACHABLE_HUB = {
    "HF_HUB_OFFLINE": "0",
    "TRANSFORMERS_OFFLINE": "0",
    **{name: "" for name in hub_checks._PROXY_VARIABLES},
}


@pytest.mark.parametrize("what", ["model", "transcoders"])
def test_an_unreachable_hub_without_the_offline_flag_is_said_at_once(tmp_path, what):
    endpoint = f"127.0.0.1:{closed_port()}"
    if what == "model":
        model, key = ci_model(source="gpt2"), f"models.{MODEL}.source"
    else:
        path = "hf://nobody/no-such-transcoders/layer_{layer}.safetensors"
        transcoders = {"kind": "pretrained", "format": "circuit_tracer", "path": path}
        model, key = ci_model(transcoders=transcoders), f"models.{MODEL}.transcoders.path"
    started = time.perf_counter()
    done = start(
        tmp_path,
        ci_config(tmp_path, models=model),
        HF_ENDPOINT=f"http://{endpoint}",
        **UNREACHABLE_HUB,
    )
    assert time.perf_counter() - started < 20  # not the download's ~25 s of retries
    assert_stopped_at_start(done, key, "cannot reach the hub", endpoint, "HF_HUB_OFFLINE=1")


# --- Snakemake's own config file handling ----------------------------------------------------


def test_an_empty_default_config_means_every_default(tmp_path):
    """config/config.yaml (the default when no --configfile is given) emptied: every key's
    default, where Snakemake's configfile would refuse an empty file."""
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.yaml").write_text("# every default\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    command = [str(SNAKEMAKE), "-n", "--cores", "1", "-s", str(ROOT / "Snakefile")]
    command += ["--config", f"results_dir={tmp_path / 'results'}"]
    done = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    stdout = dry_run_ok(done)
    assert planned(stdout, "train_transcoder") == 3  # the schema's default layers [3, 8, 13]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "Config file must be given as JSON or YAML with keys at top level."),
        ("models: [\n  a: b\n", "Config file is not valid JSON or YAML."),
        (None, "No such file or directory"),
    ],
    ids=["empty", "not-yaml", "missing"],
)
def test_snakemakes_own_config_file_messages_are_the_documented_ones(tmp_path, content, message):
    """Snakemake reads --configfile before the workflow: its message, as
    docs/troubleshooting.md quotes it (and says what to do)."""
    config = tmp_path / "config.yaml"
    if content is not None:
        config.write_text(content)
    done = start(tmp_path, config)
    assert done.returncode == 1
    assert message in done.stderr
    assert message in (ROOT / "docs/troubleshooting.md").read_text()
    assert "Job stats" not in done.stdout + done.stderr


# --- the library checks ------------------------------------------------------------------------


def test_hub_ids_with_and_without_an_org_are_accepted():
    assert is_hub_id("gpt2") and is_hub_id("openai-community/gpt2")
    assert is_hub_id("google/gemma-2-2b")
    for not_an_id in ("./model", "~/model", "a/b/c", "org/", "/abs/path", ""):
        assert not is_hub_id(not_an_id), not_an_id


def test_a_cached_hub_config_gives_the_layer_count_offline(tmp_path, monkeypatch):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"n_layer": 12}))
    monkeypatch.setattr("huggingface_hub.try_to_load_from_cache", lambda *a, **k: str(config))
    assert hub_config("gpt2") == {"n_layer": 12}
    with pytest.raises(InputError, match="layer 12 is out of range"):
        model_checks.check_layers("models.gpt2.layers", "gpt2", [0, 12], 12)
    assert model_checks.model_n_layers("models.gpt2.source", "gpt2", network=False) == 12


def test_uncached_hub_config_without_network_is_left_to_the_jobs(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr("huggingface_hub.try_to_load_from_cache", lambda *a, **k: None)
    assert model_checks.model_n_layers("models.x.source", "gpt2", network=False) is None


def test_config_json_errors_name_the_file(tmp_path):
    bad = tmp_path / "config.json"
    bad.write_bytes(b"\xff\xfe{")
    with pytest.raises(InputError, match=f"{bad}.*not JSON"):
        read_config_json(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(InputError, match=f"{bad}.*not a JSON object"):
        read_config_json(bad)


def test_a_text_file_cut_inside_a_character_is_still_text(tmp_path):
    from circuit_insights.data.documents import check_text_file

    text = tmp_path / "text.txt"
    text.write_text("é" * 10)  # 20 bytes; a limit of 5 cuts the third character
    check_text_file(text, limit=5)
    text.write_bytes("é".encode() * 3 + b"\xe9 latin-1")
    with pytest.raises(InputError, match=f"corpus file {text} is not UTF-8 text"):
        check_text_file(text)


def test_a_hub_explainer_without_a_url_is_refused():
    llm = {"url": "", "model": "Qwen/Qwen2.5-7B-Instruct", "api_key_env": ""}
    with pytest.raises(InputError, match="config key 'llm.url' must be set.*Qwen2.5-7B"):
        preflight.check_llm(llm, network=False)
    preflight.check_llm({**llm, "model": "embedded:smollm2-135m-instruct"}, network=True)


def test_a_folder_inside_a_file_is_refused(tmp_path):
    file = tmp_path / "file"
    file.write_text("")
    with pytest.raises(InputError, match=f"config key 'results_dir'.*{file} is a file"):
        preflight.check_output_folder("results_dir", file / "results")
    preflight.check_output_folder("results_dir", tmp_path / "new" / "results")


@pytest.mark.parametrize(
    "preset", sorted((ROOT / "config/presets").glob("*.yaml")), ids=lambda p: p.stem
)
def test_gpu_presets_name_a_hub_explainer_and_need_its_url(preset):
    """Never the embedded 135M explainer: a hub instruct model, served by the user (llm.url)."""
    from circuit_insights.pipeline.config import load_config
    from circuit_insights.pipeline.paths import is_embedded

    config = load_config(preset, ROOT / "workflow/schemas/config.schema.yaml")
    assert not is_embedded(config["llm"]["model"]) and is_hub_id(config["llm"]["model"])
    assert config["llm"]["url"] == ""
    with pytest.raises(InputError, match="config key 'llm.url' must be set"):
        preflight.check_llm(config["llm"], network=False)


def test_a_plain_snakemake_uses_the_workflow_profile(tmp_path):
    """profiles/default next to the Snakefile is where Snakemake looks by itself: a run with no
    --profile gets its settings (here the cap of the resource gpu, printed in a dry run)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    command = [str(SNAKEMAKE), "-n", "--configfile", "config/ci.yaml", "--config"]
    command.append(f"results_dir={tmp_path / 'results'}")
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Using workflow specific profile profiles/default" in done.stderr
    profile = yaml.safe_load((ROOT / "profiles/default/config.yaml").read_text())
    assert "gpu=1" in profile["resources"] and "gpu=0" in profile["default-resources"]


def test_unlock_after_a_crash_works_while_the_llm_server_is_down(tmp_path):
    """--unlock runs no job: validation only, so a stale lock can be removed with the run's own
    config even when its llm.url does not answer (docs/troubleshooting.md)."""
    url = f"http://127.0.0.1:{closed_port()}/v1"
    config = ci_config(tmp_path, llm={"url": url, "model": "explainer"})
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    command = [str(SNAKEMAKE), "--unlock", "--configfile", str(config), "--config"]
    command.append(f"results_dir={tmp_path / 'results'}")
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Unlock" in done.stdout + done.stderr


def test_only_a_main_process_that_plans_jobs_runs_the_preflight():
    assert preflight.runs_jobs(["snakemake", "--cores", "2", "-n"], main_process=True)
    assert not preflight.runs_jobs(["snakemake", "--unlock"], main_process=True)
    assert not preflight.runs_jobs(["snakemake", "--lint"], main_process=True)
    assert not preflight.runs_jobs(["snakemake", "--cores", "2"], main_process=False)


def test_shard_names_keep_six_digits_below_a_million_and_grow_past_it():
    assert [s.name for s in make_shards(1024, 512)] == ["f000000-000512", "f000512-001024"]
    names = [s.name for s in make_shards(1_048_576, 512)]
    assert "f999936-1000448" in names and names[-1] == "f1048064-1048576"
    assert all(parse_shard(name).name == name for name in names)
    for bad in ("f00000-000512", "f0000000-0000512", "f000512-000512"):
        with pytest.raises(InputError):
            parse_shard(bad)


def test_the_launch_says_whether_jobs_run_and_where():
    launch = preflight.launch_of
    assert launch(["snakemake", "--cores", "2"], workflow_dir=ROOT).runs_jobs_here
    for dry in (["-n"], ["-np"], ["--dry-run"], ["--touch"], ["--executor", "dryrun"]):
        assert not launch(["snakemake", *dry], workflow_dir=ROOT).runs_jobs, dry
    slurm = launch(["snakemake", "--workflow-profile", "profiles/slurm"], workflow_dir=ROOT)
    assert slurm.runs_jobs and not slurm.runs_jobs_here and slurm.executor == "slurm"
    assert launch(["snakemake", "-e", "slurm", "-n"], workflow_dir=ROOT).executor == "slurm"
    assert launch(["snakemake", "--executor=local"], workflow_dir=ROOT).runs_jobs_here


def test_hf_transcoders_are_looked_up_in_the_repository_listing(monkeypatch):
    """Online, the hub's file list of the repository (asked once) must hold every layer's file
    (a ``*``: some match)."""
    asked = []

    def listing(key, repo_id, revision):
        asked.append((repo_id, revision))
        return ["layer_0.safetensors", "layer_1.safetensors", "l0_12/width_16k/params.npz"]

    monkeypatch.setattr(transcoder_checks, "_hub_repo_files", listing)
    monkeypatch.setattr(transcoder_checks, "hub_offline", lambda: False)
    block = {"kind": "pretrained", "path": "hf://org/tc/layer_{layer}.safetensors"}
    config = {"models": {"m": {"layers": [0, 1], "transcoders": block}}}
    transcoder_checks.check_hub_transcoders(config, network=True)
    assert asked == [("org/tc", None)]
    config["models"]["m"]["layers"] = [0, 2]
    with pytest.raises(InputError, match=r"'models.m.transcoders.path'.*layer 2.*layer_2"):
        transcoder_checks.check_hub_transcoders(config, network=True)
    block["path"] = "hf://org/tc/l0_*/width_16k/params.npz"
    transcoder_checks.check_hub_transcoders(config, network=True)
    transcoder_checks.check_hub_transcoders({"models": {"m": {"transcoders": {}}}}, network=False)


def test_each_transcoder_format_names_what_its_folder_lacks(tmp_path):
    problem = transcoder_checks._folder_problem
    (tmp_path / "config.json").write_text("{}")
    assert "has config.json but no transcoder.safetensors" in problem(tmp_path, "native", 3)
    (tmp_path / "transcoder.safetensors").write_bytes(b"")
    assert problem(tmp_path, "native", 3) is None
    assert "none of params.npz, layer_3/width_*" in problem(tmp_path, "gemmascope", 3)
    assert "*blocks.3.*.pt" in problem(tmp_path, "dunefsky", 3)
    assert "layer_3.safetensors" in problem(tmp_path, "circuit_tracer", 3)


def test_a_cuda_device_must_be_one_torch_sees(monkeypatch):
    """(No GPU here: torch's answers are set.) cuda:N needs N below the GPU count."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    config = {"models": {"m": {"device": "cuda"}, "n": {"device": "cuda:1"}}}
    preflight.check_devices(config)
    config["models"]["n"]["device"] = "cuda:2"
    with pytest.raises(InputError, match=r"'models.n.device': 'cuda:2', but this machine has 2"):
        preflight.check_devices(config)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(InputError, match=r"'models.m.device': 'cuda', but torch sees no CUDA"):
        preflight.check_devices(config)


@pytest.mark.slow
def test_a_corpus_too_short_stops_its_job_naming_key_and_file_without_traceback(tmp_path):
    """What the start checks cannot see (here: 5 tokens, fewer than one context) ends the corpus
    job with one message naming the config key and the file, and no traceback."""
    corpus = tmp_path / "five.txt"
    corpus.write_text("Five words and no more.\n")
    config = ci_config(tmp_path, corpus={"source": "files", "paths": [str(corpus)]})
    results = tmp_path / "results"
    tokens = results / MODEL / "corpus" / "tokens.parquet"
    done = subprocess.run(
        [
            str(SNAKEMAKE),
            str(tokens),
            "--cores",
            "1",
            "--configfile",
            str(config),
            "--config",
            f"results_dir={results}",
        ],
        cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=1200,
    )
    output = done.stdout + done.stderr
    assert done.returncode != 0, output[-3000:]
    log = (results / "logs" / MODEL / "corpus.log").read_text()
    assert "config key 'corpus.paths'" in log and str(corpus) in log, log[-2000:]
    assert "corpus.context_length" in log
    assert "Traceback" not in log, log[-3000:]
    assert not tokens.exists()
