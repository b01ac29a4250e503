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

``--layers N`` (N >= 2) instead runs WeightLens over N consecutive layers from ``--layer``, each
layer inheriting from the results of the earlier ones as the workflow does, and prints seconds per
layer, candidates per feature per layer and the last/first ratio (target <= 1.5). Its random
transcoders are made to look trained where it matters for the cost: each feature's encoder bias
is calibrated so that it fires on ``--density`` (2%) of the non-BOS positions of its layer's real
MLP inputs (gensim's Lee news corpus through the model), and each encoder is the sum of three unit
directions: a random one, the embedding of a random token of that text, and the decoder direction
of a random feature of an earlier layer of the run; so own candidate tokens, upstream connections
and inherited tokens exist as in trained transcoders.

    .venv/bin/python benchmarks/bench_weightlens.py
    .venv/bin/python benchmarks/bench_weightlens.py --model resources/models/gemma-3-270m --layer 6
    .venv/bin/python benchmarks/bench_weightlens.py --model resources/models/gemma-3-270m \
        --layer 2 --layers 8 --features 256            # depth run (--max-inherited-tokens -1: none)
"""

from __future__ import annotations

import argparse
import itertools
import time

import numpy as np
import pandas as pd
import torch

from circuit_insights.models.shapes import benchmark_model
from circuit_insights.models.subject import SubjectModel
from circuit_insights.transcoders.base import Transcoder
from circuit_insights.weightlens.config import WeightLensOptions, resolve_thresholds
from circuit_insights.weightlens.run import run_weightlens
from circuit_insights.weightlens.weights import analyze_weights


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


def layer_inputs(
    model: SubjectModel, layers: list[int], contexts: int
) -> tuple[dict[int, torch.Tensor], np.ndarray]:
    """Each layer's MLP input at the non-BOS positions of real text: layer -> (n, d_model); and
    the text's token ids (contexts, 64)."""
    from circuit_insights.data.corpus import tokenize_contexts
    from circuit_insights.data.documents import lee_documents

    if model.tokenizer is None:
        raise SystemExit("--layers needs a model with a tokenizer (e.g. --model resources/...)")
    tokens = tokenize_contexts(
        itertools.cycle(lee_documents()),
        model.tokenizer,
        context_length=64,
        bos_token_id=model.bos_token_id,
        max_contexts=contexts,
    ).tokens.astype(np.int64)
    first = 1 if model.bos_token_id is not None else 0
    ids = torch.from_numpy(tokens).to(model.device)
    values = model.hook_values(ids, {layer: ["mlp_in"] for layer in layers})
    inputs = {
        layer: values[(layer, "mlp_in")][:, first:].reshape(-1, model.d_model).float().cpu()
        for layer in layers
    }
    return inputs, tokens


def connected_transcoders(
    model: SubjectModel, layers: list[int], n_features: int, density: float, contexts: int
) -> dict[int, Transcoder]:
    """Random transcoders with upstream structure and a calibrated firing density (see above)."""
    inputs, tokens = layer_inputs(model, layers, contexts)
    text_tokens = torch.from_numpy(np.unique(tokens[:, 1:]))
    embeddings = model.embedding_matrix().float()  # (vocab, d_model)
    generator = torch.Generator().manual_seed(0)
    transcoders: dict[int, Transcoder] = {}
    for layer in layers:
        transcoder = random_transcoder(model, layer, n_features, seed=layer)
        picked = text_tokens[torch.randint(len(text_tokens), (n_features,), generator=generator)]
        parts = [transcoder.W_enc.detach(), _unit_columns(embeddings[picked].T)]  # (d_model, F)
        earlier = [transcoders[up].W_dec for up in layers if up < layer]
        if earlier:
            decoders = torch.cat(earlier).detach().cpu()  # (F' * n_earlier, d_model), unit rows
            picks = torch.randint(len(decoders), (n_features,), generator=generator)
            parts.append(decoders[picks].T)
        with torch.no_grad():
            transcoder.W_enc.copy_(_unit_columns(sum(parts)))
            transcoder.b_enc.zero_()
            pre = transcoder.pre_activation(inputs[layer])  # (n, F)
            transcoder.b_enc.copy_(-torch.quantile(pre, 1.0 - density, dim=0))
        transcoders[layer] = transcoder.to(model.device)
    return transcoders


def _unit_columns(matrix: torch.Tensor) -> torch.Tensor:
    return matrix / matrix.norm(dim=0, keepdim=True)


def depth_run(model: SubjectModel, args: argparse.Namespace) -> None:
    """WeightLens over ``args.layers`` consecutive layers, in order, inheriting as the workflow."""
    layers = [model.check_layer(args.layer + k) for k in range(args.layers)]
    started = time.perf_counter()
    transcoders = connected_transcoders(
        model, layers, args.features, args.density, args.calibration_contexts
    )
    thresholds = resolve_thresholds(model, args.preset)
    bound = None if args.max_inherited_tokens < 0 else args.max_inherited_tokens
    options = WeightLensOptions(max_inherited_tokens=bound)
    print(
        f"model {model.name} on {model.device}: layers {layers[0]}..{layers[-1]}, "
        f"{args.features} features per layer (random + token embedding + earlier decoder, firing "
        f"calibrated to {args.density:.0%} on real text), preset {thresholds.preset}, "
        f"max_inherited_tokens {bound}, torch threads {torch.get_num_threads()} "
        f"(setup {time.perf_counter() - started:.1f} s)"
    )
    print(
        "layer  seconds  candidates/feature  inherited/feature  validated/feature  unique tokens"
        "  features at the bound"
    )
    results: dict[int, pd.DataFrame] = {}
    seconds: list[float] = []
    features = np.arange(args.features)
    first = layers[0]  # warm-up (untimed), so the first layer does not carry one-off costs
    run_weightlens(model, {first: transcoders[first]}, first, features[:16], {}, thresholds)
    for layer in layers:
        available = {up: transcoders[up] for up in layers if up <= layer}
        synchronize(model)
        t0 = time.perf_counter()
        frame = run_weightlens(
            model, available, layer, features, results, thresholds, options=options
        )
        synchronize(model)
        seconds.append(time.perf_counter() - t0)
        results[layer] = frame
        inherited = frame["candidate_sources"].map(lambda s: sum("input" not in x for x in s))
        unique = len(
            np.unique(np.concatenate([np.asarray(c) for c in frame["candidate_token_ids"]]))
        )
        print(
            f"{layer:5d}  {seconds[-1]:7.2f}  {frame['candidate_token_ids'].map(len).mean():18.1f}"
            f"  {inherited.mean():17.1f}  {frame['validated_token_ids'].map(len).mean():17.1f}"
            f"  {unique:13d}  {(inherited >= (bound if bound is not None else np.inf)).mean():21.0%}"
        )
    print(f"last / first layer seconds: {seconds[-1] / seconds[0]:.2f}  (target <= 1.5)")


def synchronize(model: SubjectModel) -> None:
    if model.device.type == "cuda":
        torch.cuda.synchronize(model.device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        help="HF folder or random:NAME (published shape, models/shapes.py); default small",
    )
    parser.add_argument("--transcoder", help="native transcoder folder for --layer")
    parser.add_argument("--layer", type=int, default=2)
    parser.add_argument("--features", type=int, default=2048, help="features of random transcoders")
    parser.add_argument("--upstream-layers", type=int, default=2, help="earlier random transcoders")
    parser.add_argument("--loop-features", type=int, default=32)
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, ...")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--layers", type=int, default=1, help=">= 2: the depth run (see above)")
    parser.add_argument("--density", type=float, default=0.02, help="depth run: firing density")
    parser.add_argument("--calibration-contexts", type=int, default=16, help="depth run")
    parser.add_argument(
        "--max-inherited-tokens", type=int, default=64, help="depth run; -1: no bound"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    started = time.perf_counter()
    if args.model:
        model = benchmark_model(args.model, device=args.device, dtype=getattr(torch, args.dtype))
    else:
        model = random_model(50257, 512, 4)
        model.hf_model.to(args.device)
    if args.layers >= 2:
        depth_run(model, args)
        return
    layer = model.check_layer(args.layer)
    if args.transcoder:
        target = Transcoder.load(args.transcoder).to(model.device)
    else:
        target = random_transcoder(model, layer, args.features, seed=layer).to(model.device)
    transcoders = {layer: target}
    upstream_results = {}
    rng = np.random.default_rng(0)
    for up in range(max(0, layer - args.upstream_layers), layer):
        transcoders[up] = random_transcoder(model, up, args.features, seed=up).to(model.device)
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
    identical = 0
    for k in range(n_loop):
        same = (
            np.array_equal(chunked.candidates[k], looped.candidates[k])
            and np.array_equal(chunked.promoted[k], looped.promoted[k])
            and chunked.upstream[k]["feature"].tolist() == looped.upstream[k]["feature"].tolist()
        )
        identical += same
        if not same and model.device.type == "cpu":
            raise AssertionError(f"feature {k}: the chunked and the looped analysis differ")
        # On CUDA, cuBLAS picks kernels by shape, so products of 1 and of 4096 columns round
        # differently and near-ties may swap: the count of identical features is printed.

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
    print(
        f"speed-up chunked / loop: {loop_s / chunked_s:8.1f}x (outputs identical on {identical} of "
        f"{n_loop} features; CPU runs require all)"
    )
    print(
        f"full run_weightlens:     {full_s:8.2f} s  {len(features) / full_s:10.1f} features/s "
        f"({n_pairs} candidate pairs, {n_unique} unique tokens validated, "
        f"{int(frame['validated_token_ids'].map(len).gt(0).sum())} features with validated tokens)"
    )


if __name__ == "__main__":
    main()
