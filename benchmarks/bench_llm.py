"""Explanation-style prompts per minute against a vLLM server, with the server's own throughput.

For each concurrency level, sends ``--prompts`` explainer-style prompts (a feature's top
contexts with the max token marked <<like this>>, its WeightLens tokens, a JSON schema asking
for a short description) through :class:`CachedBackend` over :class:`OpenAICompatibleBackend`,
and prints in the same run:

- prompts per minute and completion tokens per second as the client sees them (``usage``);
- the server's own generation throughput from ``/metrics`` (``vllm:generation_tokens_total``
  over the same wall time);
- the client overhead: the share of wall time spent outside the LLM (prompt building, cache
  look-ups and writes, parsing the answers);
- a rerun of the same prompts, all answered from the cache;
- the server's start-up time and resident memory (all its processes).

    python benchmarks/bench_llm.py                         # starts a server on the embedded SmolLM2
    python benchmarks/bench_llm.py --url http://127.0.0.1:8000/v1 --served-model-name smollm2
"""

from __future__ import annotations

import argparse
import random
import re
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from circuit_insights.llm.cache import CachedBackend, ResponseCache
from circuit_insights.llm.client import ChatRequest, parse_answer
from circuit_insights.llm.http_backend import OpenAICompatibleBackend

EMBEDDED = Path(__file__).resolve().parents[1] / "resources/models/smollm2-135m-instruct"

DESCRIPTION_SCHEMA = {
    "title": "Description",
    "type": "object",
    "properties": {"description": {"type": "string", "maxLength": 200}},
    "required": ["description"],
    "additionalProperties": False,
}

WORDS = (
    "the river bank was flooded after heavy rain and the town council met on monday to discuss "
    "new defences while farmers counted losses in the valley and children played near the old "
    "mill where a cat slept in the sun beside a bicycle that nobody had ridden for years"
).split()

SYSTEM = (
    "You explain what a feature of a language model responds to. You see text excerpts where "
    "the feature fires; the token where it fires most is marked <<like this>>. Answer with a "
    "short description of the common pattern, in JSON."
)


def explanation_prompt(feature: int, n_contexts: int = 8, context_len: int = 24) -> ChatRequest:
    """An explainer-style request for a made-up feature (seeded by ``feature``)."""
    rng = random.Random(feature)
    lines = []
    for i in range(n_contexts):
        words = [rng.choice(WORDS) for _ in range(context_len)]
        words[-1] = f"<<{words[-1]}>>"
        lines.append(f"{i + 1}. {' '.join(words)}")
    tokens = ", ".join(sorted({rng.choice(WORDS) for _ in range(5)}))
    user = (
        f"Feature {feature}.\nTokens that activate it on their own: {tokens}.\n"
        f"Excerpts:\n" + "\n".join(lines) + "\nDescribe the pattern in one sentence."
    )
    return ChatRequest.simple(user, system=SYSTEM, json_schema=DESCRIPTION_SCHEMA, max_tokens=96)


class TimedCache(ResponseCache):
    """A response cache that adds up the time spent in it."""

    seconds = 0.0

    def get_many(self, keys: Sequence[str]) -> Any:
        start = time.perf_counter()
        try:
            return super().get_many(keys)
        finally:
            self.seconds += time.perf_counter() - start

    def put(self, *args: Any, **kwargs: Any) -> bool:
        start = time.perf_counter()
        try:
            return super().put(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start


def generation_tokens_total(base_url: str) -> float | None:
    """vLLM's ``vllm:generation_tokens_total`` from ``/metrics`` (None when unavailable)."""
    import httpx

    root = re.sub(r"/v1/?$", "", base_url)
    try:
        text = httpx.get(f"{root}/metrics", timeout=10, trust_env=False).text
    except httpx.HTTPError:
        return None
    values = [
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("vllm:generation_tokens_total")
    ]
    return sum(values) if values else None


def group_rss_mib(pgid: int) -> float:
    """Resident memory of every process in group ``pgid``, MiB."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            if int(stat[stat.rindex(")") + 2 :].split()[2]) != pgid:
                continue
            for line in (entry / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return total / 1024


def run_level(
    url: str, model: str, concurrency: int, n_prompts: int, first_feature: int, work: Path
) -> dict[str, float]:
    """One concurrency level: fresh cache, timed send, then a fully cached rerun."""
    cache = TimedCache(work / f"cache-c{concurrency}.sqlite")
    backend = OpenAICompatibleBackend(url, model, concurrency=concurrency, timeout_s=900)
    backend.check_server()
    cached = CachedBackend(backend, cache)
    server_before = generation_tokens_total(url)
    start = time.perf_counter()
    build_start = time.perf_counter()
    requests = [explanation_prompt(first_feature + i) for i in range(n_prompts)]
    build_s = time.perf_counter() - build_start
    results = cached.chat_many(requests)
    wall = time.perf_counter() - start
    server_after = generation_tokens_total(url)
    parse_start = time.perf_counter()
    for result, request in zip(results, requests, strict=True):
        parse_answer(result.text, request.json_schema)
    parse_s = time.perf_counter() - parse_start
    rerun_start = time.perf_counter()
    again = CachedBackend(backend, cache).chat_many(requests)
    rerun_s = time.perf_counter() - rerun_start
    assert all(r.cached for r in again)
    tokens_out = sum(r.tokens_out for r in results)
    tokens_in = sum(r.tokens_in for r in results)
    overhead = build_s + cache.seconds + parse_s
    figures = {
        "concurrency": concurrency,
        "prompts": n_prompts,
        "wall_s": wall,
        "prompts_per_min": 60 * n_prompts / wall,
        "prompt_tokens_mean": tokens_in / n_prompts,
        "completion_tokens_mean": tokens_out / n_prompts,
        "client_completion_tok_s": tokens_out / wall,
        "server_generation_tok_s": (
            (server_after - server_before) / wall
            if server_before is not None and server_after is not None
            else float("nan")
        ),
        "latency_median_s": statistics.median(r.latency_s for r in results),
        "parse_ok_share": sum(r.parse_status == "ok" for r in results) / n_prompts,
        "client_overhead_share": overhead / wall,
        "client_overhead_ms": 1000 * overhead,
        "cached_rerun_prompts_per_min": 60 * n_prompts / rerun_s,
    }
    backend.close()
    cache.close()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default=str(EMBEDDED), help="HF folder to serve")
    parser.add_argument("--url", default=None, help="use this running server instead")
    parser.add_argument("--served-model-name", default="smollm2")
    parser.add_argument("--concurrency", default="1,8", help="comma-separated levels")
    parser.add_argument("--prompts", default="4,16", help="prompts per level (comma-separated)")
    parser.add_argument("--kv-cache-space-gib", type=int, default=1)
    args = parser.parse_args()
    levels = [int(x) for x in args.concurrency.split(",")]
    counts = [int(x) for x in args.prompts.split(",")]
    if len(counts) == 1:
        counts = counts * len(levels)

    with tempfile.TemporaryDirectory(prefix="bench-llm-") as tmp:
        work = Path(tmp)
        server = None
        if args.url is None:
            from circuit_insights.llm.server import VLLMServer

            model_dir = Path(args.model_dir)
            if not (model_dir / "config.json").is_file():
                from circuit_insights.models.embedded import build_smollm2

                print(f"converting SmolLM2 to {work / 'smollm2'} (about a minute)")
                model_dir = build_smollm2(work / "smollm2")
            server = VLLMServer(
                model_dir,
                served_model_name=args.served_model_name,
                kv_cache_space_gib=args.kv_cache_space_gib,
                log_path=work / "vllm.log",
            )
            server.start()
            url = server.url
            print(f"server start-up: {server.startup_s:.0f} s")
            assert server.pid is not None
            print(f"server RSS after start-up: {group_rss_mib(server.pid):.0f} MiB")
        else:
            url = args.url
        try:
            first = 0
            for concurrency, n_prompts in zip(levels, counts, strict=True):
                figures = run_level(
                    url, args.served_model_name, concurrency, n_prompts, first, work
                )
                first += n_prompts  # fresh prompts per level: nothing shared with the last one
                print(
                    " ".join(
                        f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                        for k, v in figures.items()
                    )
                )
            if server is not None and server.pid is not None:
                print(f"server RSS after the runs: {group_rss_mib(server.pid):.0f} MiB")
        finally:
            if server is not None:
                server.stop()


if __name__ == "__main__":
    main()
