"""The LLM client, response cache and answer parsing, against a fake OpenAI server (no vLLM)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from circuit_insights.core.errors import InputError
from circuit_insights.llm.cache import CachedBackend, ResponseCache, cache_key
from circuit_insights.llm.client import (
    ChatRequest,
    ChatResult,
    LLMBackend,
    LLMServerError,
    parse_answer,
)
from circuit_insights.llm.http_backend import OpenAICompatibleBackend

RATING_SCHEMA = {
    "title": "Rating",
    "type": "object",
    "properties": {"rating": {"type": "integer", "enum": [0, 1, 2]}},
    "required": ["rating"],
    "additionalProperties": False,
}

# A handler gets the request body and the 1-based number of the call; it returns
# (status, content-or-error-text, delay_s) or None to drop the connection without answering.
Handler = Callable[
    [dict[str, Any], int], "tuple[int, str, float] | tuple[int, str, float, dict] | None"
]


class FakeOpenAIServer:
    """A tiny OpenAI-compatible server in a thread: /v1/models and /v1/chat/completions."""

    def __init__(self, handler: Handler, models: tuple[str, ...] = ("fake",)) -> None:
        self.handler = handler
        self.models = models
        self.calls = 0
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.call_times: list[float] = []
        self._lock = threading.Lock()
        fake = self

        class RequestHandler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, payload: Any) -> None:
                data = json.dumps(payload).encode() if not isinstance(payload, bytes) else payload
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path == "/v1/models":
                    self._send(200, {"data": [{"id": name} for name in fake.models]})
                else:
                    self._send(404, {"error": "not found"})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake._lock:
                    fake.calls += 1
                    number = fake.calls
                    fake.bodies.append(body)
                    fake.headers.append(dict(self.headers))
                    fake.call_times.append(time.monotonic())
                    fake.in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                counted = True
                try:
                    outcome = fake.handler(body, number)
                    if outcome is None:  # the server dies: no answer, connection dropped
                        self.close_connection = True
                        return
                    status, content, delay, *extra = outcome
                    time.sleep(delay)
                    # Done before the answer leaves: a client that sends its next request as
                    # soon as it has this answer must not find this one still counted.
                    with fake._lock:
                        fake.in_flight -= 1
                        counted = False
                    if status != 200:
                        self._send(status, {"error": {"message": content}})
                        return
                    self._send(
                        200,
                        {
                            "choices": [
                                {
                                    "message": {"role": "assistant", "content": content},
                                    "finish_reason": "stop",
                                }
                            ],
                            "usage": {"prompt_tokens": 7, "completion_tokens": 3},
                            **(extra[0] if extra else {}),
                        },
                    )
                finally:
                    if counted:
                        with fake._lock:
                            fake.in_flight -= 1

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), RequestHandler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def shutdown(self) -> None:
        """Stop answering: the listening socket closes, new connections are refused."""
        self.httpd.shutdown()
        self.httpd.server_close()


@contextlib.contextmanager
def fake_server(
    handler: Handler, models: tuple[str, ...] = ("fake",)
) -> Iterator[FakeOpenAIServer]:
    server = FakeOpenAIServer(handler, models)
    try:
        yield server
    finally:
        with contextlib.suppress(Exception):
            server.shutdown()


def echo_rating(body: dict[str, Any], number: int) -> tuple[int, str, float]:
    """Answers a rating derived from the prompt, so answers differ per request."""
    prompt = body["messages"][-1]["content"]
    return 200, json.dumps({"rating": len(prompt) % 3}), 0.0


def backend(url: str, **options: Any) -> OpenAICompatibleBackend:
    options.setdefault("backoff_s", 0.01)
    options.setdefault("max_retries", 2)
    options.setdefault("timeout_s", 5.0)
    return OpenAICompatibleBackend(url, "fake", **options)


def rating_requests(n: int) -> list[ChatRequest]:
    return [
        ChatRequest.simple(f"rate text {'x' * i}", json_schema=RATING_SCHEMA, max_tokens=20)
        for i in range(n)
    ]


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ----------------------------------------------------------------------------------------------
# Requests and cache keys


def test_request_equality_hash_and_key_ignore_dict_order_and_list_types() -> None:
    schema_a = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
    schema_b = {"required": ["a"], "properties": {"a": {"type": "string"}}, "type": "object"}
    a = ChatRequest(messages=(("system", "s"), ("user", "u")), json_schema=schema_a)
    b = ChatRequest(messages=[["system", "s"], ["user", "u"]], json_schema=schema_b)  # type: ignore[arg-type]
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert a.canonical_json() == b.canonical_json()
    assert cache_key("m", a) == cache_key("m", b)
    assert isinstance(a.messages, tuple) and isinstance(b.messages[0], tuple)


def test_request_is_detached_from_the_callers_schema() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    request = ChatRequest.simple("u", json_schema=schema)
    key = cache_key("m", request)
    schema["properties"]["b"] = {"type": "integer"}
    assert cache_key("m", request) == key


@pytest.mark.parametrize(
    "change",
    [
        {"temperature": 0.5},
        {"max_tokens": 255},
        {"seed": 1},
        {"json_schema": RATING_SCHEMA},
        {"user": "other"},
        {"system": "sys"},
        {"repetition_penalty": 1.2},
        {"prompt_logprobs": 5},
    ],
)
def test_every_field_and_the_model_change_the_key(change: dict[str, Any]) -> None:
    base: dict[str, Any] = {"user": "hello"}
    request = ChatRequest.simple(**base)
    changed = ChatRequest.simple(**{**base, **change})
    assert cache_key("m", request) != cache_key("m", changed)
    assert cache_key("m", request) != cache_key("n", request)


def test_cache_key_is_stable_across_versions() -> None:
    """A fixed request has a fixed key: a change here invalidates every user's cache."""
    request = ChatRequest(
        messages=(("system", "You rate texts."), ("user", "Rate: café")),
        json_schema={"type": "object"},
        temperature=0.0,
        max_tokens=64,
        seed=3,
    )
    documented = {  # the format written down in docs/llm.md
        "model": "smollm2",
        "request": {
            "format": 1,
            "messages": [["system", "You rate texts."], ["user", "Rate: café"]],
            "json_schema": {"type": "object"},
            "temperature": 0.0,
            "max_tokens": 64,
            "seed": 3,
        },
    }
    text = json.dumps(documented, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert cache_key("smollm2", request) == hashlib.sha256(text.encode()).hexdigest()
    assert cache_key("smollm2", request) == (
        "4b28b781066a8c473ddfe76d09af00ba4c29bc6e59ac5f324c047420381cfc3f"
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"messages": ()},
        {"messages": (("wizard", "x"),)},
        {"messages": (("user", 3),)},
        {"messages": (("user", "x"),), "temperature": -1.0},
        {"messages": (("user", "x"),), "max_tokens": 0},
        {"messages": (("user", "x"),), "repetition_penalty": 0.0},
        {"messages": (("user", "x"),), "json_schema": {"bad": {1, 2}}},
        {"messages": (("user", "x"),), "prompt_logprobs": -1},
        {"messages": (("user", "x"),), "prompt_logprobs": 3, "json_schema": {"type": "object"}},
    ],
)
def test_bad_requests_raise_input_error(kwargs: dict[str, Any]) -> None:
    with pytest.raises(InputError):
        ChatRequest(**kwargs)


# ----------------------------------------------------------------------------------------------
# Parsing


@pytest.mark.parametrize(
    ("text", "status", "parsed"),
    [
        ('{"rating": 2}', "ok", {"rating": 2}),
        ('  ```json\n{"rating": 1}\n```  ', "ok", {"rating": 1}),
        ('Sure! Here it is: {"rating": 0} Hope it helps.', "ok", {"rating": 0}),
        ("The answer is 3.", "unparseable", None),
        ('{"rating": 3}', "unparseable", {"rating": 3}),
        ('{"rating": 2', "unparseable", None),
        ("", "empty", None),
        ("   \n", "empty", None),
    ],
)
def test_parse_answer_with_schema(text: str, status: str, parsed: Any) -> None:
    value, got_status, error = parse_answer(text, RATING_SCHEMA)
    assert got_status == status
    assert value == parsed
    assert (error is None) == (status in ("ok", "empty"))


def test_parse_answer_without_schema_keeps_text_only() -> None:
    assert parse_answer("free text", None) == (None, "ok", None)
    assert parse_answer("", None) == (None, "empty", None)


# ----------------------------------------------------------------------------------------------
# The HTTP client


def test_answers_come_back_in_order_with_structured_output_requested() -> None:
    requests = rating_requests(12)
    with fake_server(echo_rating) as server:
        results = backend(server.url, concurrency=4).chat_many(requests)
    assert [r.parsed for r in results] == [{"rating": len(r.messages[-1][1]) % 3} for r in requests]
    assert all(r.parse_status == "ok" and not r.cached for r in results)
    assert all(r.tokens_in == 7 and r.tokens_out == 3 for r in results)
    body = server.bodies[0]
    assert body["model"] == "fake" and body["temperature"] == 0.0 and body["seed"] == 0
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["schema"] == RATING_SCHEMA
    assert body["response_format"]["json_schema"]["name"] == "Rating"
    plain = backend("http://127.0.0.1:1/v1").payload(ChatRequest.simple("hi"))
    assert "response_format" not in plain and "repetition_penalty" not in plain
    penalised = ChatRequest.simple("hi", repetition_penalty=1.3)
    assert backend("http://127.0.0.1:1/v1").payload(penalised)["repetition_penalty"] == 1.3


@pytest.mark.parametrize("concurrency", [1, 3])
def test_concurrency_limit_is_honoured(concurrency: int) -> None:
    def slow(body: dict[str, Any], number: int) -> tuple[int, str, float]:
        return 200, '{"rating": 1}', 0.15

    with fake_server(slow) as server:
        results = backend(server.url, concurrency=concurrency).chat_many(rating_requests(9))
    assert len(results) == 9
    assert server.max_in_flight <= concurrency
    assert server.max_in_flight == concurrency  # and the pool is actually used


def test_retries_with_exponential_backoff_on_server_errors() -> None:
    def flaky(body: dict[str, Any], number: int) -> tuple[int, str, float]:
        return (503, "busy", 0.0) if number <= 2 else (200, '{"rating": 2}', 0.0)

    with fake_server(flaky) as server:
        (result,) = backend(server.url, backoff_s=0.1, max_retries=3).chat_many(rating_requests(1))
    assert result.parse_status == "ok" and result.parsed == {"rating": 2}
    assert server.calls == 3
    gaps = [b - a for a, b in zip(server.call_times, server.call_times[1:], strict=False)]
    assert gaps[0] >= 0.1 * 0.9 and gaps[1] >= 0.2 * 0.9  # waits double


def test_retries_spent_raise_naming_the_server() -> None:
    with fake_server(lambda body, number: (500, "boom", 0.0)) as server:
        with pytest.raises(LLMServerError, match="127.0.0.1"):
            backend(server.url, max_retries=2).chat_many(rating_requests(1))
    assert server.calls == 3


def test_a_request_that_times_out_is_retried() -> None:
    def first_slow(body: dict[str, Any], number: int) -> tuple[int, str, float]:
        return 200, '{"rating": 0}', (1.5 if number == 1 else 0.0)

    with fake_server(first_slow) as server:
        (result,) = backend(server.url, timeout_s=0.3, max_retries=1).chat_many(rating_requests(1))
    assert result.parsed == {"rating": 0}
    assert server.calls == 2


def test_timeout_without_retries_raises() -> None:
    with fake_server(lambda body, number: (200, '{"rating": 0}', 1.5)) as server:
        start = time.monotonic()
        with pytest.raises(LLMServerError, match="Timeout"):
            backend(server.url, timeout_s=0.3, max_retries=0).chat_many(rating_requests(1))
        assert time.monotonic() - start < 1.4


def test_unparseable_empty_and_rejected_answers_are_results_not_exceptions() -> None:
    answers = {0: "The answer is 3.", 1: "", 2: '{"rating": 1}'}

    def mixed(body: dict[str, Any], number: int) -> tuple[int, str, float]:
        index = int(body["messages"][-1]["content"].split()[-1])
        if index == 3:
            return 400, "This model's maximum context length is 2048 tokens", 0.0
        return 200, answers[index], 0.0

    requests = [ChatRequest.simple(f"q {i}", json_schema=RATING_SCHEMA) for i in range(4)]
    with fake_server(mixed) as server:
        results = backend(server.url).chat_many(requests)
    assert [r.parse_status for r in results] == ["unparseable", "empty", "ok", "error"]
    assert results[0].text == "The answer is 3." and results[0].parsed is None
    assert "not JSON" in (results[0].error or "")
    assert results[1].text == "" and results[1].error is None
    assert "maximum context length" in (results[3].error or "")
    assert server.calls == 4  # a 400 is not retried


def test_prompt_logprobs_are_asked_for_read_and_cached(tmp_path: Any) -> None:
    # vLLM's answer: per prompt position the prompt token first, then the top ones
    answer = [
        None,
        {"5": {"logprob": -0.1, "rank": 1, "decoded_token": "\t"}},
        {
            "9": {"logprob": -4.0, "rank": 9, "decoded_token": "unknown"},
            "3": {"logprob": -0.5, "rank": 1, "decoded_token": "3"},
        },
    ]

    def with_logprobs(body: dict[str, Any], number: int) -> tuple[int, str, float, dict]:
        extra = {"prompt_logprobs": answer} if body.get("prompt_logprobs") else {}
        return 200, "x", 0.0, extra

    request = ChatRequest.simple(
        "a\tunknown", max_tokens=1, prompt_logprobs=4, prompt_logprobs_after="\t"
    )
    plain = ChatRequest.simple("a\tunknown", max_tokens=1)
    with fake_server(with_logprobs) as server:
        with ResponseCache(tmp_path / "llm.sqlite") as cache:
            cached = CachedBackend(backend(server.url), cache)
            first, without = cached.chat_many([request, plain])
            again = cached.chat_many([request])[0]
    assert server.bodies[0]["prompt_logprobs"] == 4 and "prompt_logprobs" not in server.bodies[1]
    expected = [{"position": 2, "token": "unknown", "top": {"unknown": -4.0, "3": -0.5}}]
    assert first.parse_status == "ok" and first.parsed == expected
    assert without.parsed is None and without.text == "x"
    assert again.cached and again.parsed == expected and server.calls == 2


def test_a_server_without_prompt_logprobs_gives_an_error_result() -> None:
    request = ChatRequest.simple("a\tunknown", max_tokens=1, prompt_logprobs=4)
    with fake_server(lambda body, number: (200, "x", 0.0)) as server:
        result = backend(server.url).chat_many([request])[0]
    assert result.parse_status == "error"
    assert "no prompt log-probabilities" in (result.error or "")


def test_unreachable_server_is_an_input_error_naming_the_url() -> None:
    url = f"http://127.0.0.1:{unused_port()}/v1"
    with pytest.raises(InputError, match=f"LLM server at {url} is unreachable"):
        backend(url, max_retries=1).chat_many(rating_requests(1))


def test_a_model_the_server_does_not_serve_is_an_input_error() -> None:
    with fake_server(echo_rating, models=("other",)) as server:
        with pytest.raises(InputError, match="does not serve model 'fake'"):
            backend(server.url).chat_many(rating_requests(1))


def test_api_key_comes_from_the_named_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    with fake_server(echo_rating) as server:
        monkeypatch.delenv("CI_TEST_LLM_KEY", raising=False)
        with pytest.raises(InputError, match="CI_TEST_LLM_KEY"):
            backend(server.url, api_key_env="CI_TEST_LLM_KEY").chat_many(rating_requests(1))
        monkeypatch.setenv("CI_TEST_LLM_KEY", "sekret")
        backend(server.url, api_key_env="CI_TEST_LLM_KEY").chat_many(rating_requests(1))
    assert server.headers[-1]["Authorization"] == "Bearer sekret"


# ----------------------------------------------------------------------------------------------
# The cache


class CountingBackend:
    """A fake backend that counts the requests it is sent."""

    model_name = "counting"

    def __init__(self) -> None:
        self.sent: list[ChatRequest] = []

    def chat_many(self, requests: Any) -> list[ChatResult]:
        self.sent.extend(requests)
        return [
            ChatResult(
                text=f"answer to {r.messages[-1][1]}",
                parsed=None,
                parse_status="ok",
                tokens_in=1,
                tokens_out=1,
                latency_s=0.0,
                cached=False,
                error=None,
            )
            for r in requests
        ]


def test_cached_backend_sends_each_distinct_request_once(tmp_path: Any) -> None:
    inner = CountingBackend()
    requests = [ChatRequest.simple(f"q{i % 5}") for i in range(10)]  # 5 distinct, twice each
    with ResponseCache(tmp_path / "llm.sqlite") as cache:
        cached = CachedBackend(inner, cache)
        assert isinstance(cached, LLMBackend)
        first = cached.chat_many(requests)
        assert len(inner.sent) == 5
        assert [r.text for r in first] == [f"answer to q{i % 5}" for i in range(10)]
        more = requests + [ChatRequest.simple("new")]
        second = cached.chat_many(more)
        assert len(inner.sent) == 6 and inner.sent[-1] == ChatRequest.simple("new")
        assert [r.text for r in second[:10]] == [r.text for r in first]
        assert all(r.cached for r in second[:10]) and not second[10].cached
    # a new process (new cache object on the same file) sends nothing either
    with ResponseCache(tmp_path / "llm.sqlite") as cache:
        again = CachedBackend(inner, cache).chat_many(more)
        assert len(inner.sent) == 6 and len(cache) == 6
        assert [r.text for r in again] == [r.text for r in second]


def test_errors_are_not_cached_and_parsed_values_round_trip(tmp_path: Any) -> None:
    request = ChatRequest.simple("x", json_schema=RATING_SCHEMA)
    ok = ChatResult('{"rating": 1}', {"rating": 1}, "ok", 3, 4, 0.5, False, None)
    error = ChatResult("", None, "error", 0, 0, 0.1, False, "HTTP 400")
    with ResponseCache(tmp_path / "c.sqlite") as cache:
        assert cache.put("k1", "m", request, ok)
        assert not cache.put("k2", "m", request, error)
        got = cache.get("k1")
        assert got is not None and got.cached and got.parsed == {"rating": 1}
        assert (got.tokens_in, got.tokens_out, got.latency_s) == (3, 4, 0.5)
        assert cache.get("k2") is None


def test_server_dying_mid_run_keeps_answers_and_rerun_sends_only_the_missing(tmp_path: Any) -> None:
    requests = rating_requests(10)
    dead = threading.Event()

    def dies_after_four(body: dict[str, Any], number: int) -> tuple[int, str, float] | None:
        if number > 4:
            if not dead.is_set():
                dead.set()
                threading.Thread(target=server.shutdown, daemon=True).start()
            return None
        return echo_rating(body, number)

    cache_path = tmp_path / "llm.sqlite"
    with fake_server(dies_after_four) as server:
        with ResponseCache(cache_path) as cache:
            with pytest.raises(LLMServerError):
                CachedBackend(backend(server.url, concurrency=2), cache).chat_many(requests)
            answered = len(cache)
    assert answered == 4

    with fake_server(echo_rating) as second:  # the server restarted (another port, same model)
        with ResponseCache(cache_path) as cache:
            results = CachedBackend(backend(second.url, concurrency=2), cache).chat_many(requests)
            assert len(cache) == 10
    assert second.calls == 6
    sent = {body["messages"][-1]["content"] for body in second.bodies}
    assert len(sent) == 6
    assert sum(r.cached for r in results) == 4
    assert [r.parsed for r in results] == [{"rating": len(r.messages[-1][1]) % 3} for r in requests]


def _write_entries(path: str, worker: int, n: int) -> None:
    request = ChatRequest.simple("x")
    result = ChatResult("a", None, "ok", 1, 1, 0.0, False, None)
    with ResponseCache(path) as cache:
        for i in range(n):
            cache.put(f"{worker}-{i}", "m", request, result)


def test_cache_is_shared_safely_by_processes(tmp_path: Any) -> None:
    path = str(tmp_path / "shared.sqlite")
    ResponseCache(path).close()
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_write_entries, args=(path, w, 100)) for w in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    with ResponseCache(path) as cache:
        assert len(cache) == 300
        assert cache.get("2-99") is not None


def _open_together(path: str, worker: int, barrier: Any) -> None:
    barrier.wait(30)
    _write_entries(path, worker, 1)


def test_jobs_that_start_together_can_all_open_a_new_cache(tmp_path: Any) -> None:
    """Two explain jobs once failed opening a cache file that neither had created yet ("database
    is locked" while switching it to WAL). Every worker opens a fresh file at the same moment."""
    context = multiprocessing.get_context("fork")
    n_workers = 8
    for round_ in range(40):  # before the fix about 1 round in 30 failed
        path = str(tmp_path / f"fresh{round_}.sqlite")
        barrier = context.Barrier(n_workers)
        workers = [
            context.Process(target=_open_together, args=(path, w, barrier))
            for w in range(n_workers)
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(60)
        assert [w.exitcode for w in workers] == [0] * n_workers, f"round {round_}"
        with ResponseCache(path) as cache:
            assert len(cache) == n_workers


def test_a_corrupt_cache_file_is_an_input_error_naming_it(tmp_path: Any) -> None:
    path = tmp_path / "broken.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(InputError, match="broken.sqlite"):
        ResponseCache(path)


def test_stopping_early_does_not_wait_for_answers_in_flight() -> None:
    def slow_after_first(body: dict[str, Any], number: int) -> tuple[int, str, float]:
        return 200, '{"rating": 1}', (0.0 if number == 1 else 3.0)

    with fake_server(slow_after_first) as server:
        client = backend(server.url, concurrency=1)
        start = time.monotonic()
        for _index, _result in client.iter_chat(rating_requests(5)):
            break
        assert time.monotonic() - start < 2.0
        assert server.calls <= 2  # the rest were never sent


# ----------------------------------------------------------------------------------------------
# Failed requests fail the job (llm.max_failed_share)


def _not_implemented(body: dict[str, Any], number: int) -> tuple[int, str, float]:
    return 501, "Unsupported method ('POST')", 0.0


def test_a_server_that_fails_every_request_fails_the_job_naming_url_status_and_answer(
    tmp_path: Any,
) -> None:
    from circuit_insights.llm.failures import LLMRequestsFailed, counted

    with fake_server(_not_implemented) as server, ResponseCache(tmp_path / "c.sqlite") as cache:
        counter = counted(CachedBackend(backend(server.url), cache), url=server.url)
        results = counter.chat_many(rating_requests(3))
        assert [r.parse_status for r in results] == ["error"] * 3  # 501 is not retried
        assert (counter.requests, counter.failed) == (3, 3)
        assert len(cache) == 0  # errors are never cached: a rerun asks again
        with pytest.raises(LLMRequestsFailed) as caught:
            counter.raise_if_failed(what="explain layer 3 shard f000000-000128", max_failed_share=0)
    message = str(caught.value)
    assert message.startswith("explain layer 3 shard f000000-000128: 3 of 3 LLM requests")
    assert server.url in message and "HTTP 501" in message and "Unsupported method" in message
    assert "llm.max_failed_share 0" in message


def test_failures_within_the_tolerance_pass_and_answers_are_not_failures(tmp_path: Any) -> None:
    from circuit_insights.llm.failures import LLMRequestsFailed, counted

    def one_in_four_fails(body: dict[str, Any], number: int) -> tuple[int, str, float]:
        if number % 4 == 0:
            return 404, "no such route", 0.0
        if number % 4 == 1:
            return 200, "not json at all", 0.0  # an answer, unparseable: not a failed request
        return echo_rating(body, number)

    with fake_server(one_in_four_fails) as server:
        counter = counted(backend(server.url, concurrency=1), url=server.url)
        results = counter.chat_many(rating_requests(8))
    assert sum(r.parse_status == "error" for r in results) == 2
    assert sum(r.parse_status == "unparseable" for r in results) == 2
    assert (counter.requests, counter.failed, counter.failed_share()) == (8, 2, 0.25)
    counter.raise_if_failed(what="evaluate", max_failed_share=0.25)  # at the tolerance: passes
    with pytest.raises(LLMRequestsFailed, match="2 of 8 LLM requests .* failed"):
        counter.raise_if_failed(what="evaluate", max_failed_share=0.2)
    assert "HTTP 404: " in (counter.first_error or "")


def test_a_job_with_no_failed_request_passes_at_zero_tolerance() -> None:
    from circuit_insights.llm.failures import counted

    with fake_server(echo_rating) as server:
        counter = counted(backend(server.url), url=server.url)
        counter.chat_many(rating_requests(4))
    assert (counter.requests, counter.failed) == (4, 0)
    counter.raise_if_failed(what="explain", max_failed_share=0.0)
