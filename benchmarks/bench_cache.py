"""Caching throughput against a bare forward pass through the same layers, in the same run.

Prints tokens/s of (a) the bare forward pass up to the layer's MLP input and (b) caching: the
same forward pass, the transcoder's encoder and the sparse shard writer; their ratio (target
>= 0.8) and the peak resident memory.

    python benchmarks/bench_cache.py                        # embedded Gemma 3 270M if built
    python benchmarks/bench_cache.py --model tiny-llama     # a tiny random model (seconds)
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from circuit_insights.data.cache import ARTIFACTS, cache_split
from circuit_insights.data.shards import make_shards
from circuit_insights.models.adapters import SubjectModel
from circuit_insights.transcoders.base import Transcoder

EMBEDDED = Path(__file__).resolve().parents[1] / "resources/models/gemma-3-270m"


def load_model(name: str) -> SubjectModel:
    if name.startswith("tiny-"):
        from circuit_insights.models.tiny import tiny_subject_model

        return tiny_subject_model(name.removeprefix("tiny-"), n_layers=4, d_model=64)
    return SubjectModel.from_pretrained(name)


def random_transcoder(model: SubjectModel, layer: int, n_features: int) -> Transcoder:
    """A random transcoder whose features fire on a few percent of tokens, like a trained one."""
    torch.manual_seed(0)
    transcoder = Transcoder(model.d_model, n_features, layer=layer)
    with torch.no_grad():
        transcoder.W_enc.normal_(0, model.d_model**-0.5)
        transcoder.W_dec.normal_(0, n_features**-0.5)
        transcoder.b_enc.fill_(-2.0)  # about 2% of unit-variance pre-activations are above 2
    return transcoder


def bare_forward(model: SubjectModel, tokens: np.ndarray, layer: int, batch_size: int) -> float:
    """Seconds of the forward passes up to ``layer``'s MLP input, nothing else."""
    started = time.perf_counter()
    for start in range(0, len(tokens), batch_size):
        ids = torch.from_numpy(tokens[start : start + batch_size].astype(np.int64))
        model.hook_values(ids, {layer: ["mlp_in"]})
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(EMBEDDED) if EMBEDDED.is_dir() else "tiny-llama")
    parser.add_argument("--layer", type=int, default=None, help="default: two thirds of depth")
    parser.add_argument("--features", type=int, default=2048)
    parser.add_argument("--shard-size", type=int, default=512)
    parser.add_argument("--contexts", type=int, default=64)
    parser.add_argument("--context-length", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    layer = args.layer if args.layer is not None else (2 * model.n_layers) // 3
    transcoder = random_transcoder(model, layer, args.features)
    generator = np.random.default_rng(0)
    tokens = generator.integers(
        3, min(model.vocab_size, 30000), (args.contexts, args.context_length)
    )
    if model.bos_token_id is not None:
        tokens[:, 0] = model.bos_token_id
    shards = make_shards(args.features, args.shard_size)
    n_tokens = tokens.size

    bare_forward(model, tokens[: args.batch_size], layer, args.batch_size)  # warm-up
    bare_times, cache_times = [], []
    for repeat in range(args.repeats):  # interleaved, so drifting machine load hits both
        bare_times.append(bare_forward(model, tokens, layer, args.batch_size))
        with tempfile.TemporaryDirectory() as folder:
            out_paths = {
                shard: {kind: f"{folder}/{kind}/{shard.name}.parquet" for kind in ARTIFACTS}
                for shard in shards
            }
            result = cache_split(
                model,
                transcoder,
                layer,
                np.arange(len(tokens)),
                tokens,
                shards,
                out_paths,
                batch_size=args.batch_size,
                exclude_bos=True,
                label=f"bench {repeat}",
            )
            cache_times.append(result["seconds"])
    bare_rate = n_tokens / min(bare_times)
    cache_rate = n_tokens / min(cache_times)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"model {args.model}, layer {layer}, {args.features} features in {len(shards)} shards, "
        f"{args.contexts} contexts x {args.context_length} tokens, batch {args.batch_size}, "
        f"{args.threads} threads (best of {args.repeats})"
    )
    print(f"bare forward to layer {layer}: {bare_rate:8.0f} tokens/s")
    print(f"caching                : {cache_rate:8.0f} tokens/s")
    print(f"ratio caching / bare   : {cache_rate / bare_rate:8.2f}  (target >= 0.8)")
    print(f"peak resident memory   : {peak_mib:8.0f} MiB")


if __name__ == "__main__":
    main()
