"""Benchmark: WeightLens weight analysis with chunked matrix products vs a per-feature loop.

Both run in the same process on the same weights: the chunked path (``feature_chunk`` auto, one
(vocab, chunk) matrix product per step) over all features of one layer, and the per-feature loop
(``feature_chunk=1``: one matrix-vector product per feature, same code otherwise) over a subset of
``--loop-features`` features, extrapolated linearly to all features. The two agree on the subset
(checked). Validation (the batched single-token forward passes, shared by both paths) and the full
``run_weightlens`` are timed separately.

Default: a random mid-size GPT-2-shaped model (vocab 50257, d_model 512, 4 layers), random
transcoders at layers 0..L. ``--model PATH`` loads a Hugging Face model folder (e.g. the embedded
Gemma 3 270M at resources/models/gemma-3-270m); ``--transcoder DIR`` a native transcoder folder
for ``--layer``, else a random one with ``--features`` features.

    .venv/bin/python benchmarks/bench_weightlens.py
    .venv/bin/python benchmarks/bench_weightlens.py --model resources/models/gemma-3-270m --layer 6
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
import torch

from circuit_insights.models.adapters import SubjectModel
from circuit_insights.transcoders.base import Transcoder
from circuit_insights.weightlens import (
    WeightLensOptions,
    analyze_weights,
    resolve_thresholds,
    run_weightlens,
)


def random_model(vocab: int, d_model: int, n_layers: int) -> SubjectModel:
    import transformers as tf

    config = tf.GPT2Config(
        vocab_size=vocab, n_embd=d_model, n_layer=n_layers, n_head=8, n_positions=64
    )
    torch.manual_seed(0)
    return SubjectModel(tf.GPT2LMHeadModel(config).eval(), None, name="random-gpt2")


def random_transcoder(model: SubjectModel, layer: int, n_features: int, seed: int) -> Transcoder:
    """Random unit-norm encoders and decoders; bias -2.3 (1% of a unit-variance pre-activation)."""
    generator = torch.Generator().manual_seed(seed)
    transcoder = Transcoder(model.d_model, n_features, layer=layer)
    with torch.no_grad():
        encoder = torch.randn(model.d_model, n_features, generator=generator)
        transcoder.W_enc.copy_(encoder / encoder.norm(dim=0, keepdim=True))
        decoder = torch.randn(n_features, model.d_model, generator=generator)
        transcoder.W_dec.copy_(decoder / decoder.norm(dim=1, keepdim=True))
        transcoder.b_enc.fill_(-2.3)
    return transcoder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="Hugging Face model folder (default: random GPT-2 shape)")
    parser.add_argument("--transcoder", help="native transcoder folder for --layer")
    parser.add_argument("--layer", type=int, default=2)
    parser.add_argument("--features", type=int, default=2048, help="features of random transcoders")
    parser.add_argument("--upstream-layers", type=int, default=2, help="earlier random transcoders")
    parser.add_argument("--loop-features", type=int, default=32)
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    started = time.perf_counter()
    if args.model:
        model = SubjectModel.from_pretrained(args.model, local_files_only=True)
    else:
        model = random_model(50257, 512, 4)
    layer = model.check_layer(args.layer)
    if args.transcoder:
        target = Transcoder.load(args.transcoder)
    else:
        target = random_transcoder(model, layer, args.features, seed=layer)
    transcoders = {layer: target}
    upstream_results = {}
    rng = np.random.default_rng(0)
    for up in range(max(0, layer - args.upstream_layers), layer):
        transcoders[up] = random_transcoder(model, up, args.features, seed=up)
        upstream_results[up] = pd.DataFrame(
            {
                "feature": np.arange(args.features),
                "validated_token_ids": [
                    rng.integers(0, model.vocab_size, rng.integers(0, 3)).tolist()
                    for _ in range(args.features)
                ],
            }
        )
    thresholds = resolve_thresholds(model, args.preset)
    features = np.arange(target.d_transcoder)
    n_loop = min(args.loop_features, len(features))
    print(
        f"model {model.name}: vocab {model.vocab_size}, d_model {model.d_model}, layer {layer}, "
        f"{len(features)} features, upstream layers {sorted(upstream_results)}, "
        f"preset {thresholds.preset}, torch threads {torch.get_num_threads()} "
        f"(setup {time.perf_counter() - started:.1f} s)"
    )

    options = WeightLensOptions()
    analyze_weights(model, transcoders, layer, features[:8], thresholds, options)  # warm-up
    t0 = time.perf_counter()
    chunked = analyze_weights(model, transcoders, layer, features, thresholds, options)
    chunked_s = time.perf_counter() - t0

    loop_options = WeightLensOptions(feature_chunk=1)
    t0 = time.perf_counter()
    looped = analyze_weights(model, transcoders, layer, features[:n_loop], thresholds, loop_options)
    loop_subset_s = time.perf_counter() - t0
    loop_s = loop_subset_s * len(features) / n_loop
    for k in range(n_loop):
        assert np.array_equal(chunked.candidates[k], looped.candidates[k]), k
        assert np.array_equal(chunked.promoted[k], looped.promoted[k]), k
        assert chunked.upstream[k]["feature"].tolist() == looped.upstream[k]["feature"].tolist()

    t0 = time.perf_counter()
    frame = run_weightlens(model, transcoders, layer, features, upstream_results, thresholds)
    full_s = time.perf_counter() - t0
    n_pairs = int(frame["candidate_token_ids"].map(len).sum())
    n_unique = len(np.unique(np.concatenate([list(c) for c in frame["candidate_token_ids"]])))

    print(
        f"chunked weight analysis: {chunked_s:8.2f} s  {len(features) / chunked_s:10.1f} features/s"
    )
    print(
        f"per-feature loop:        {loop_s:8.2f} s  {len(features) / loop_s:10.1f} features/s "
        f"(measured on {n_loop} features: {loop_subset_s:.2f} s, extrapolated x{len(features) / n_loop:.0f})"
    )
    print(f"speed-up chunked / loop: {loop_s / chunked_s:8.1f}x (outputs identical on the subset)")
    print(
        f"full run_weightlens:     {full_s:8.2f} s  {len(features) / full_s:10.1f} features/s "
        f"({n_pairs} candidate pairs, {n_unique} unique tokens validated, "
        f"{int(frame['validated_token_ids'].map(len).gt(0).sum())} features with validated tokens)"
    )


if __name__ == "__main__":
    main()
