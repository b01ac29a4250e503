"""Throughput of CircuitLens attribution against a plain forward + backward pass of the same batches.

Prints (feature, sample) pairs per second of :func:`circuit_insights.circuitlens.attribution.attribute` and the
time of plain forward+backward passes of the same rows (same padded batches, gradient of the
target feature's pre-activations with respect to the embeddings, parameters frozen), measured in
the same run, and their ratio (target: <= 2).

    .venv/bin/python benchmarks/bench_attribution.py                      # tiny Gemma-2, < 1 min
    .venv/bin/python benchmarks/bench_attribution.py --model resources/models/gemma-3-270m --layer 6
"""

from __future__ import annotations

import argparse
import math
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

from circuit_insights.circuitlens.attribution import AttributionRequest, attribute  # noqa: E402
from circuit_insights.models.shapes import benchmark_model  # noqa: E402
from circuit_insights.models.subject import SubjectModel  # noqa: E402
from circuit_insights.transcoders.base import Transcoder  # noqa: E402


def tiny_model(family: str, n_layers: int, d_model: int) -> SubjectModel:
    """A randomly initialised model of ``family`` (eager attention, float32)."""
    import transformers as tf

    common = dict(vocab_size=512, bos_token_id=2, eos_token_id=1)
    if family == "gpt2":
        config = tf.GPT2Config(
            n_layer=n_layers, n_embd=d_model, n_head=8, n_positions=512, **common
        )
    elif family == "llama":
        config = tf.LlamaConfig(
            num_hidden_layers=n_layers, hidden_size=d_model, intermediate_size=4 * d_model,
            num_attention_heads=8, num_key_value_heads=4, **common,
        )  # fmt: skip
    else:
        config = tf.Gemma2Config(
            num_hidden_layers=n_layers, hidden_size=d_model, intermediate_size=4 * d_model,
            num_attention_heads=8, num_key_value_heads=4, head_dim=d_model // 8, pad_token_id=0,
            **common,
        )  # fmt: skip
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    hf_model = tf.AutoModelForCausalLM.from_config(config).eval()
    return SubjectModel(hf_model, None, name=f"tiny-{family}")


def random_transcoders(
    model: SubjectModel, layers: list[int], d_transcoder: int, contexts: torch.Tensor
) -> dict[int, Transcoder]:
    """Random transcoders scaled to the model's hooks, about 2% of the features firing."""
    generator = torch.Generator().manual_seed(0)
    values = model.hook_values(contexts[:4], {layer: ["mlp_in", "mlp_out"] for layer in layers})
    transcoders = {}
    for layer in layers:
        transcoder = Transcoder(model.d_model, d_transcoder, layer=layer).to(model.device)
        x = values[(layer, "mlp_in")].reshape(-1, model.d_model).float()
        y = values[(layer, "mlp_out")].reshape(-1, model.d_model).float()
        with torch.no_grad():
            W_enc = torch.randn(model.d_model, d_transcoder, generator=generator).to(model.device)
            transcoder.W_enc.copy_(W_enc / (x.pow(2).mean().sqrt() * math.sqrt(model.d_model)))
            transcoder.b_enc.copy_(-transcoder.pre_activation(x).quantile(0.98, dim=0))
            out = transcoder.encode(x) @ transcoder.W_dec
            transcoder.W_dec.mul_(y.pow(2).mean().sqrt() / out.pow(2).mean().sqrt().clamp_min(1e-8))
        transcoders[layer] = transcoder
    return transcoders


class _Stop(Exception):
    pass


def firing_requests(
    model: SubjectModel,
    transcoder: Transcoder,
    layer: int,
    contexts: torch.Tensor,
    features_per_context: int,
) -> list[AttributionRequest]:
    """Per context, the features that fire most at its target position (as sampling picks them)."""
    x = model.hook_values(contexts, {layer: [transcoder.input_hook]})[
        (layer, transcoder.input_hook)
    ]
    requests = []
    for sample, context in enumerate(contexts.tolist()):
        target = len(context) - 2 - (sample % 5)
        with torch.no_grad():
            activations = transcoder.encode(x[sample, target])
        for feature in activations.topk(features_per_context).indices.tolist():
            requests.append(AttributionRequest(context, target, feature, sample))
    return requests


def plain_forward_backward(
    model: SubjectModel,
    transcoder: Transcoder,
    layer: int,
    requests: list[AttributionRequest],
    batch_size: int,
    *,
    whole_model: bool = True,
) -> float:
    """Seconds for plain forward+backward passes over the same rows, batched like attribution.

    ``whole_model``: the full forward pass to the logits, and back; else only up to the target
    feature's pre-activation at ``layer`` (the part the input-side attribution differentiates).
    """
    ordered = sorted(requests, key=lambda r: (r.target_position, tuple(r.context_tokens)))
    embed = model.embedding_module
    handle = embed.register_forward_hook(lambda _m, _a, out: out.requires_grad_())
    for parameter in model.hf_model.parameters():
        parameter.requires_grad_(False)
    seconds = 0.0
    try:
        for start in range(0, len(ordered), batch_size):
            batch = ordered[start : start + batch_size]
            n_pos = max(r.target_position + 1 for r in batch)
            ids = torch.zeros(len(batch), n_pos, dtype=torch.long)
            for row, request in enumerate(batch):
                tokens = list(request.context_tokens)[:n_pos]
                ids[row, : len(tokens)] = torch.tensor(tokens)
            seen = {}

            def keep(_module, _args, out, seen=seen):
                seen["x"] = out
                if not whole_model:
                    raise _Stop

            norm = model.block_part(layer, "pre_mlp_norm")
            hook = norm.register_forward_hook(keep)
            _synchronize(model)
            begin = time.perf_counter()
            rows = torch.arange(len(batch), device=model.device)
            targets = torch.tensor([r.target_position for r in batch], device=model.device)
            features = torch.tensor([r.feature for r in batch], device=model.device)
            try:
                output = model.hf_model(input_ids=ids.to(model.device), use_cache=False)
            except _Stop:
                output = None
            pre = transcoder.pre_activation(seen["x"][rows, targets])[rows, features]
            loss = pre.sum()
            if output is not None:
                loss = loss + output.logits[rows, targets].logsumexp(-1).sum()
            loss.backward()
            _synchronize(model)
            seconds += time.perf_counter() - begin
            hook.remove()
    finally:
        handle.remove()
    return seconds


def _synchronize(model: SubjectModel) -> None:
    if model.device.type == "cuda":
        torch.cuda.synchronize(model.device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", help="HF folder or random:NAME (published shape, models/shapes.py); default tiny"
    )
    parser.add_argument("--family", default="gemma2", choices=["gpt2", "gemma2", "llama"])
    parser.add_argument("--tiny-layers", type=int, default=6)
    parser.add_argument("--tiny-d-model", type=int, default=128)
    parser.add_argument("--layer", type=int, default=3, help="layer of the attributed features")
    parser.add_argument("--d-transcoder", type=int, default=2048)
    parser.add_argument("--contexts", type=int, default=8)
    parser.add_argument("--features-per-context", type=int, default=4)
    parser.add_argument("--context-length", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--output-k", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, ...")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=2, help="timed runs (after one warm-up)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.model:
        model = benchmark_model(args.model, device=args.device, dtype=getattr(torch, args.dtype))
    else:
        model = tiny_model(args.family, args.tiny_layers, args.tiny_d_model)
        model.hf_model.to(args.device)
    generator = torch.Generator().manual_seed(1)
    n = args.context_length - (1 if model.bos_token_id is not None else 0)
    contexts = torch.randint(
        3, min(model.vocab_size, 30_000), (args.contexts, n), generator=generator
    )
    contexts = torch.tensor([model.with_bos(row) for row in contexts.tolist()])
    layers = list(range(model.n_layers))
    transcoders = random_transcoders(model, layers, args.d_transcoder, contexts)
    requests = firing_requests(
        model, transcoders[args.layer], args.layer, contexts, args.features_per_context
    )

    def run_attribution() -> float:
        _synchronize(model)
        begin = time.perf_counter()
        attribute(
            model, transcoders, args.layer, requests, batch_size=args.batch_size,
            output_k=args.output_k,
        )  # fmt: skip
        _synchronize(model)
        return time.perf_counter() - begin

    run_attribution()  # warm-up
    plain_forward_backward(model, transcoders[args.layer], args.layer, requests, args.batch_size)
    attribution_s = min(run_attribution() for _ in range(args.repeats))
    plain_s = min(
        plain_forward_backward(
            model, transcoders[args.layer], args.layer, requests, args.batch_size
        )
        for _ in range(args.repeats)
    )
    partial_s = min(
        plain_forward_backward(
            model, transcoders[args.layer], args.layer, requests, args.batch_size, whole_model=False
        )
        for _ in range(args.repeats)
    )
    pairs = len(requests)
    print(
        f"model: {model.name} ({model.n_layers} layers, d_model {model.d_model}) on {args.device}"
    )
    print(
        f"{pairs} (feature, sample) pairs = {args.contexts} contexts x {args.features_per_context} "
        f"features, {args.context_length} tokens, layer {args.layer}, "
        f"{args.d_transcoder} transcoder features, batch size {args.batch_size}"
    )
    print(f"attribution: {attribution_s:.3f} s, {pairs / attribution_s:.1f} pairs/s")
    print(f"plain forward+backward of the same batches: {plain_s:.3f} s")
    print(f"ratio attribution / plain: {attribution_s / plain_s:.2f}x (target <= 2x)")
    print(
        f"plain forward+backward only up to layer {args.layer}'s pre-activation: {partial_s:.3f} s"
        f" (ratio {attribution_s / partial_s:.2f}x)"
    )


if __name__ == "__main__":
    main()
