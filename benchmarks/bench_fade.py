"""Benchmark: FADE's steered greedy generation with a KV cache vs rerunning the whole sequence and
vs Hugging Face ``generate``.

:func:`circuit_insights.evaluation.fade.subject.greedy_continuations` runs the prompt once, then one
position per step with the model's KV cache, inside the nnsight trace that applies the steering
(``kv_cache=False``: the whole growing sequence at every step, as before). The baselines,
measured in the same run on the same prompts, are that rerunning loop and ``hf_model.generate``
(greedy, exactly ``--tokens`` new tokens). ``generate`` bypasses the nnsight trace in which
steering is applied, so the three are compared without steering: they must give the same tokens
(printed). The steered loop is then timed against the unsteered one. Also timed: the metrics on
``--samples`` rated samples (pure numpy).

Default: a random GPT-2-shaped model (vocab 50257, d_model 512, 4 layers) and a random
transcoder at layer 2; ``--model PATH`` loads a Hugging Face model folder instead.

    .venv/bin/python benchmarks/bench_fade.py
    .venv/bin/python benchmarks/bench_fade.py --prompts 50 --prompt-tokens 64 --tokens 30
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from circuit_insights.evaluation import metrics as fade_metrics
from circuit_insights.evaluation.fade.subject import greedy_continuations, steering
from circuit_insights.models.shapes import benchmark_model
from circuit_insights.models.subject import SubjectModel
from circuit_insights.transcoders.base import Transcoder


def random_model(vocab: int, d_model: int, n_layers: int) -> SubjectModel:
    import transformers as tf

    config = tf.GPT2Config(
        vocab_size=vocab, n_embd=d_model, n_layer=n_layers, n_head=8, n_positions=256
    )
    torch.manual_seed(0)
    return SubjectModel(tf.GPT2LMHeadModel(config).eval(), None, name="random-gpt2")


def random_transcoder(model: SubjectModel, layer: int, n_features: int) -> Transcoder:
    generator = torch.Generator().manual_seed(1)
    transcoder = Transcoder(model.d_model, n_features, layer=layer)
    with torch.no_grad():
        transcoder.W_enc.copy_(torch.randn(model.d_model, n_features, generator=generator))
        transcoder.W_dec.copy_(torch.randn(n_features, model.d_model, generator=generator))
    return transcoder.to(model.device)


def synchronize(model: SubjectModel) -> None:
    if model.device.type == "cuda":
        torch.cuda.synchronize(model.device)


def hf_generate(model: SubjectModel, prompts: torch.Tensor, n_tokens: int, batch: int):
    out = []
    for start in range(0, len(prompts), batch):
        ids = prompts[start : start + batch].to(model.device)
        generated = model.hf_model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=n_tokens,
            min_new_tokens=n_tokens,
            pad_token_id=0,
        )
        out.append(generated[:, ids.shape[1] :].cpu())
    return torch.cat(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default=None, help="HF folder or random:NAME (models/shapes.py); default small"
    )
    parser.add_argument("--layer", type=int, default=2)
    parser.add_argument("--features", type=int, default=1024)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=30)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--factor-value", type=float, default=20.0)
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, ...")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if args.model:
        model = benchmark_model(args.model, device=args.device, dtype=getattr(torch, args.dtype))
    else:
        model = random_model(50257, 512, 4)
        model.hf_model.to(args.device)
    transcoder = random_transcoder(model, args.layer, args.features)
    generator = torch.Generator().manual_seed(2)
    prompts = torch.randint(
        3, model.vocab_size - 1, (args.prompts, args.prompt_tokens), generator=generator
    )
    prompts = torch.tensor([model.with_bos(row.tolist()[1:]) for row in prompts])

    # generate() runs the Hugging Face model directly and cannot see the nnsight splice that
    # steering applies inside SubjectModel: the three are compared unsteered, where all must give
    # the same tokens, and the steered loop (FADE's path) is timed on its own.
    greedy_continuations(model, prompts[:1], 2)  # warm-up
    greedy_continuations(model, prompts[:1], 2, kv_cache=False)
    hf_generate(model, prompts[:1], 2, 1)
    with steering(model, transcoder, 0, args.factor_value):
        greedy_continuations(model, prompts[:1], 2)  # the first nnsight trace compiles

    def timed(function, *args, **kwargs):
        synchronize(model)
        start = time.perf_counter()
        result = function(*args, **kwargs)
        synchronize(model)
        return result, time.perf_counter() - start

    rerun, rerun_s = timed(
        greedy_continuations, model, prompts, args.tokens, batch_size=args.batch, kv_cache=False
    )
    cached_loop, cached_loop_s = timed(
        greedy_continuations, model, prompts, args.tokens, batch_size=args.batch
    )
    generated, generate_s = timed(hf_generate, model, prompts, args.tokens, args.batch)
    with steering(model, transcoder, 0, args.factor_value):
        steered, steered_s = timed(
            greedy_continuations, model, prompts, args.tokens, batch_size=args.batch
        )
    n_new = args.prompts * args.tokens
    print(
        f"model {model.name} on {model.device}, {args.prompts} prompts x {args.prompt_tokens} "
        f"tokens, +{args.tokens}"
    )
    for label, seconds in (
        ("greedy loop, KV cache (FADE)", cached_loop_s),
        ("greedy loop, reruns (before)", rerun_s),
        ("HF generate, KV cache", generate_s),
    ):
        print(f"{label:29}: {seconds:8.2f} s  ({n_new / seconds:8.1f} new tok/s)")
    print(
        f"ratio reruns / KV loop       : {rerun_s / cached_loop_s:8.2f}x; KV loop / generate "
        f"{cached_loop_s / generate_s:.2f}x; same tokens: reruns "
        f"{float((rerun == cached_loop).float().mean()):.3f}, generate "
        f"{float((generated == cached_loop).float().mean()):.3f}"
    )
    print(
        f"steered KV loop              : {steered_s:8.2f} s  ({n_new / steered_s:8.1f} new tok/s), "
        f"{steered_s / cached_loop_s:.2f}x the unsteered loop; tokens changed by steering: "
        f"{float((steered != cached_loop).float().mean()):.3f}"
    )

    rng = np.random.default_rng(0)
    activations = rng.exponential(size=args.samples)
    ratings = rng.integers(0, 3, size=args.samples)
    synthetic = rng.exponential(2.0, size=150)
    start = time.perf_counter()
    for _ in range(100):
        fade_metrics.clarity(synthetic, activations)
        fade_metrics.responsiveness_and_purity(activations, ratings)
        fade_metrics.select_rating_samples(activations, args.samples // 2, seed=1)
    print(
        f"metrics + sampler on {args.samples} samples: {(time.perf_counter() - start) * 10:.2f} ms"
    )


if __name__ == "__main__":
    main()
