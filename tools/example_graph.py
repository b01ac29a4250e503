"""Write config/examples/graph.json, the small attribution graph of config/examples/graph.yaml.

A graph file in circuit-tracer's format (``interop.graph_example.write_example_graph``) for the
embedded default (Gemma 3 270M, the transcoders trained here at layers 3, 8 and 13, 128
features each): the prompt's tokens and ids are the embedded tokenizer's, as circuit-tracer
writes them (``tokenizer.decode`` of each id, ``frontend/utils.py`` ``process_token``); the
features and attributions are made up. Run from the repository root once the embedded model is
built (``snakemake resources/models/gemma-3-270m/model.safetensors``):
``python -m tools.example_graph``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from circuit_insights.interop.graph_example import write_example_graph
from circuit_insights.pipeline.config import load_schema, validate_config
from circuit_insights.pipeline.interop import transcoder_set

ROOT = Path(__file__).resolve().parents[1]
#: The prompt, the features of the graph (layer -> features) and the output token.
PROMPT = "The capital of France is"
OUTPUT = " Paris"
FEATURES = {3: [5, 17, 42], 8: [9, 64], 13: [3, 100]}
SLUG = "capital-of-france"


def process_token(token: str) -> str:
    """circuit-tracer's display of a token (``frontend/utils.py`` ``process_token``)."""
    return token.replace("\n", "⏎").replace("\t", "→").replace("\r", "↵")


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="config/examples/graph.yaml")
    parser.add_argument("--out", default="config/examples/graph.json")
    parser.add_argument("--tokenizer", default="resources/models/gemma-3-270m")
    args = parser.parse_args(argv)
    from transformers import AutoTokenizer

    raw = yaml.safe_load((ROOT / args.config).read_text(encoding="utf-8"))
    (model,) = raw["models"]
    raw["models"][model].pop("graph", None)  # the file this writes
    config = validate_config(raw, load_schema(ROOT / "workflow/schemas/config.schema.yaml"))
    tokenizer = AutoTokenizer.from_pretrained(ROOT / args.tokenizer)
    ids = tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    ids = [tokenizer.bos_token_id, *ids]  # BOS first, as the workflow and circuit-tracer read it
    (output_id,) = tokenizer(OUTPUT, add_special_tokens=False)["input_ids"]
    out = ROOT / args.out
    write_example_graph(
        out,
        target=transcoder_set(config, model),
        features=FEATURES,
        prompt_tokens=[process_token(str(tokenizer.decode([i]))) for i in ids],
        token_ids=ids,
        n_layers=18,  # Gemma 3 270M
        slug=SLUG,
        output_token=process_token(str(tokenizer.decode([output_id]))),
        output_token_id=output_id,
    )
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
