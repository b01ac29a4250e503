"""Simulated sequences per second against a vLLM server: the expected-value simulator (prompt
log-probabilities, nothing generated; one sequence per prompt as delphi, and several per prompt)
against the all-at-once JSON simulator (the baseline), in the same run.

The sequences are what rule delphi_llm sends on the embedded default (config/config.yaml:
``scores.example_length`` 8): windows of 8 word tokens of the gensim package's English test
corpus (the embedded default's text), each with a one-sentence explanation as SmolLM2 writes
them. For each mode it prints sequences per second as the client sees them, the server's prompt
and completion tokens, and the share of sequences whose answer could be read (the rest count as
*failed* and are read as all 0, as delphi does); then the ratio of the two throughputs.

    python benchmarks/bench_simulation.py                  # starts a server on the embedded SmolLM2
    python benchmarks/bench_simulation.py --url http://127.0.0.1:8000/v1 --sequences 40
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from circuit_insights.evaluation.delphi.config import DelphiScoresConfig
from circuit_insights.evaluation.delphi.examples import Example
from circuit_insights.evaluation.delphi.simulation import (
    MODE_EXPECTED_VALUE,
    SIMULATION,
    SimulationPlan,
)
from circuit_insights.llm.http_backend import OpenAICompatibleBackend

EMBEDDED = Path(__file__).resolve().parents[1] / "resources/models/smollm2-135m-instruct"

EXPLANATIONS = (
    "The feature fires on the word 'the' before a noun in news text.",
    "Numbers and years, most strongly on four-digit years.",
    "Names of countries and cities in reports about politics.",
    "The token after a comma in a list of things.",
)


def corpus_words() -> list[str]:
    """The words of the gensim package's Lee background corpus, each with a leading space."""
    from gensim.test.utils import datapath

    text = Path(datapath("lee_background.cor")).read_text(encoding="utf-8", errors="replace")
    return [f" {word}" for word in text.split()]


def plan_of(
    words: list[str], n_sequences: int, length: int, offset: int, per_prompt: int
) -> SimulationPlan:
    """``n_sequences`` windows of ``length`` words from ``offset`` (token ids index ``words``)."""
    examples, true = [], []
    for index in range(n_sequences):
        start = offset + index * length
        ids = np.arange(start, start + length, dtype=np.int64)
        acts = np.zeros(length)
        examples.append(
            Example(
                context=index,
                row=index,
                token_ids=ids,
                positions=np.arange(length),
                activations=acts,
                quantile=-1,
            )
        )
        true.append(acts)
    return SimulationPlan(tuple(examples), tuple(true), per_prompt)


def run_mode(
    backend: OpenAICompatibleBackend,
    words: list[str],
    config: DelphiScoresConfig,
    n_sequences: int,
    offset: int,
) -> dict[str, Any]:
    """Simulate ``n_sequences`` windows per explanation; the figures of the mode."""
    from circuit_insights.evaluation.delphi.simulation import expected_values, parse_simulation

    def show(token: int) -> str:
        return words[token]

    per = max(1, n_sequences // len(EXPLANATIONS))
    jobs = []
    for number, explanation in enumerate(EXPLANATIONS):
        per_prompt = (
            config.simulation_sequences_per_prompt
            if config.simulation_mode == MODE_EXPECTED_VALUE
            else 1
        )
        plan = plan_of(words, per, config.example_length, offset + number * per * 8, per_prompt)
        jobs.append((plan, SIMULATION.requests(plan, explanation, show, config, 0)))
    requests = [request for _, batch in jobs for request in batch]
    start = time.perf_counter()
    results = backend.chat_many(requests)
    wall = time.perf_counter() - start
    read, n_sequences, first = 0, 0, 0
    for plan, batch in jobs:
        answers = results[first : first + len(batch)]
        first += len(batch)
        lengths = [len(example.positions) for example in plan.examples]
        n_sequences += len(lengths)
        if config.simulation_mode == MODE_EXPECTED_VALUE:
            for result, group in zip(answers, plan.prompt_groups(), strict=True):
                read += sum(
                    ok for _, ok in expected_values(result.parsed, [lengths[i] for i in group])
                )
        else:
            read += sum(
                parse_simulation(result.text, n)[1]
                for result, n in zip(answers, lengths, strict=True)
            )
    return {
        "mode": config.simulation_mode,
        "sequences": n_sequences,
        "prompts": len(requests),
        "wall_s": wall,
        "sequences_per_s": n_sequences / wall,
        "prompt_tokens": sum(r.tokens_in for r in results),
        "completion_tokens": sum(r.tokens_out for r in results),
        "read_share": read / n_sequences,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default=str(EMBEDDED), help="HF folder to serve")
    parser.add_argument("--url", default=None, help="use this running server instead")
    parser.add_argument("--served-model-name", default="smollm2")
    parser.add_argument("--sequences", type=int, default=40, help="sequences per mode")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument(
        "--json-max-tokens", type=int, default=160, help="answer budget of a JSON simulation"
    )
    parser.add_argument(
        "--per-prompt", type=int, default=20, help="sequences per packed expected-value prompt"
    )
    args = parser.parse_args()
    words = corpus_words()
    base = DelphiScoresConfig(example_length=8, simulation_max_tokens=args.json_max_tokens)
    with tempfile.TemporaryDirectory(prefix="bench-simulation-") as tmp:
        server = None
        url = args.url
        if url is None:
            from circuit_insights.llm.server import VLLMServer

            server = VLLMServer(
                Path(args.model_dir),
                served_model_name=args.served_model_name,
                log_path=Path(tmp) / "vllm.log",
            )
            server.start()
            url = server.url
            print(f"server start-up: {server.startup_s:.0f} s")
        try:
            backend = OpenAICompatibleBackend(
                url, args.served_model_name, concurrency=args.concurrency, timeout_s=900.0
            )
            modes = {
                "all_at_once": {"simulation_mode": "all_at_once"},
                "expected_value": {"simulation_mode": "expected_value"},
                f"expected_value x{args.per_prompt}": {
                    "simulation_mode": "expected_value",
                    "simulation_sequences_per_prompt": args.per_prompt,
                },
            }
            figures = {}
            for number, (name, change) in enumerate(modes.items()):
                config = dataclasses.replace(base, **change)
                # fresh windows per mode: the server's prefix cache shares nothing between them
                offset = number * (len(words) // len(modes))
                figures[name] = run_mode(backend, words, config, args.sequences, offset)
                print(
                    f"{name}: "
                    + " ".join(
                        f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                        for k, v in figures[name].items()
                        if k != "mode"
                    )
                )
            baseline = figures["all_at_once"]["sequences_per_s"]
            for name, row in figures.items():
                print(
                    f"{name} / all_at_once sequences per second: "
                    f"{row['sequences_per_s'] / baseline:.2f}x"
                )
        finally:
            if server is not None:
                server.stop()


if __name__ == "__main__":
    main()
