"""Caching throughput against a bare forward pass through the same layers, in the same run.

The transcoder is random, its encoder bias calibrated per feature so that each feature fires on
``--density`` (default 2%) of the non-BOS positions of the model's own layer inputs on real text
(gensim's Lee news corpus, read from the local gensim install; random token ids for tiny models
without a tokenizer). Calibration uses other contexts than the timed ones; the density measured on
the timed contexts is printed. A random transcoder with a fixed bias would be meaningless: Gemma 3
270M's layer-12 MLP input has RMS about 0.45, so a bias of -2 fires on ~0.001% of pairs and the
writer would be timed almost empty.

Prints tokens/s of (a) the bare forward pass up to the layer's MLP input and (b) caching: the
same forward pass, the transcoder's encoder and the sparse shard writer; their ratio (target
>= 0.9) and the peak resident memory (peak GPU memory too on CUDA).

    python benchmarks/bench_cache.py                        # embedded Gemma 3 270M if built
    python benchmarks/bench_cache.py --model tiny-llama     # a tiny random model (seconds)
    python benchmarks/bench_cache.py --device cuda --density 0.02
    python benchmarks/bench_cache.py --writer-only          # the sparse writer alone, one thread
    python benchmarks/bench_cache.py --all-layers --layers 3,8,13       # one forward, all layers
    python benchmarks/bench_cache.py --all-layers --model random:gemma-2-2b --narrow 256 \
        --features 2048 --density 0.006                     # 26 layers, Gemma-2-2B narrowed

``--writer-only`` times :class:`ActivationCacheWriter` alone, as rule cache runs it per batch
(``statistics="deferred"``: the non-zeros into Arrow chunk files and the token count, no maxima,
no statistics), on random (contexts, positions, features) batches whose entries fire
independently with probability ``--density`` (the measured density is printed), against a floor
measured in the same run on the same batches: the non-zeros found, sorted by feature and written
raw with numpy (``np.flatnonzero``, ``np.argsort``, ``ndarray.tofile``), with no statistics,
maxima or parquet. It also prints what rule merge_cache then spends per non-zero on that chunk
(``merge_shard``: the parquet shard files, the maxima and statistics derived from the merged
non-zeros) and the writer writing the parquet shard files directly with maxima and statistics
(one pass over the corpus, no chunks).

``--all-layers`` times what a cache job of the workflow does, caching every layer of ``--layers``
(default: the embedded default's 3, 8, 13, or every layer of a ``random:`` shape) from one forward
pass (``cache_layers``, Arrow chunk files and token counts as rule cache writes them), against
(a) one bare forward pass to the deepest layer's MLP input and (b) the same forward with every
layer's encoder but no writer, in the same process, interleaved. Each layer's transcoder is calibrated as above on that
layer's own inputs. ``--narrow D`` builds a ``random:`` shape with residual width D (MLP 4D,
head_dim D / heads, the same layer count and architecture) so that 26 layers of Gemma-2-2B run on
a CPU; keep ``--features`` about as many times D as the real transcoders are (16,384 / 2,304 = 7)
so that encoding weighs what it does at full size.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import resource
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from circuit_insights.data.cache import ARTIFACTS, CHUNK_ARTIFACTS, ActivationCacheWriter
from circuit_insights.data.cache_merge import merge_shard
from circuit_insights.data.cache_split import cache_layers, cache_split
from circuit_insights.data.shards import make_shards
from circuit_insights.models.shapes import benchmark_model
from circuit_insights.models.subject import SubjectModel
from circuit_insights.transcoders.base import Transcoder

EMBEDDED = Path(__file__).resolve().parents[1] / "resources/models/gemma-3-270m"


def load_model(
    name: str, device: str, dtype: torch.dtype = torch.float32, narrow: int | None = None
) -> SubjectModel:
    if narrow is not None:
        return narrowed_shape_model(name, narrow, device=device, dtype=dtype)
    if name.startswith("tiny-"):
        from circuit_insights.models.tiny import tiny_subject_model

        model = tiny_subject_model(name.removeprefix("tiny-"), n_layers=4, d_model=64)
        model.hf_model.to(device)
        return model
    return benchmark_model(name, device=device, dtype=dtype)


def narrowed_shape_model(
    spec: str, d_model: int, *, device: str, dtype: torch.dtype, vocab_size: int = 32768
) -> SubjectModel:
    """A published shape (``random:NAME``) with residual width ``d_model``, MLP width 4 x that,
    the same heads (head_dim = d_model / heads), layers and architecture, and ``vocab_size``
    token ids; random weights."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from circuit_insights.models.shapes import PUBLISHED_SHAPES

    if not spec.startswith("random:"):
        raise SystemExit(f"--narrow needs a random:NAME model, not {spec!r}")
    fields = dict(PUBLISHED_SHAPES[spec.removeprefix("random:")])
    heads_key = "num_attention_heads" if "num_attention_heads" in fields else "n_head"
    width_key = "hidden_size" if "hidden_size" in fields else "n_embd"
    head_dim = d_model // fields[heads_key]
    fields[width_key] = d_model
    fields["vocab_size"] = vocab_size
    if "intermediate_size" in fields:
        fields["intermediate_size"] = 4 * d_model
    if "head_dim" in fields:
        fields["head_dim"] = head_dim
    if "query_pre_attn_scalar" in fields:
        fields["query_pre_attn_scalar"] = head_dim
    config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    torch.manual_seed(0)
    with torch.device(device):
        hf_model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return SubjectModel(hf_model.eval(), None, name=f"{spec}-narrow{d_model}")


def corpus_tokens(model: SubjectModel, n_contexts: int, context_length: int) -> np.ndarray:
    """(n_contexts, context_length) token ids: real text when the model has a tokenizer."""
    if model.tokenizer is not None:
        from circuit_insights.data.corpus import tokenize_contexts
        from circuit_insights.data.documents import lee_documents

        contexts = tokenize_contexts(
            itertools.cycle(lee_documents()),
            model.tokenizer,  # type: ignore[arg-type]  # a PreTrainedTokenizerBase
            context_length=context_length,
            bos_token_id=model.bos_token_id,
            max_contexts=n_contexts,
        )
        return contexts.tokens.astype(np.int64)
    tokens = np.random.default_rng(0).integers(
        3, min(model.vocab_size, 30000), (n_contexts, context_length)
    )
    if model.bos_token_id is not None:
        tokens[:, 0] = model.bos_token_id
    return tokens


def layer_inputs(
    model: SubjectModel, tokens: np.ndarray, layer: int, hook: str, batch_size: int
) -> torch.Tensor:
    """The layer's transcoder inputs at non-BOS positions: (n_positions, d_model), float32."""
    first = 1 if model.bos_token_id is not None else 0
    rows = []
    for start in range(0, len(tokens), batch_size):
        ids = torch.from_numpy(tokens[start : start + batch_size]).to(model.device)
        x = model.hook_values(ids, {layer: [hook]})[(layer, hook)]  # (batch, pos, d_model)
        rows.append(x[:, first:].reshape(-1, x.shape[-1]).float().cpu())
    return torch.cat(rows)


def calibrated_transcoder(
    model: SubjectModel, layer: int, n_features: int, inputs: torch.Tensor, density: float
) -> Transcoder:
    """A random ReLU transcoder; feature f's bias is minus the (1 - density) quantile of its
    pre-activation over ``inputs`` (n, d_model), so every feature fires on ``density`` of them."""
    generator = torch.Generator().manual_seed(0)
    transcoder = Transcoder(model.d_model, n_features, layer=layer)
    with torch.no_grad():
        transcoder.W_enc.copy_(torch.randn(model.d_model, n_features, generator=generator))
        transcoder.W_enc.mul_(model.d_model**-0.5)
        transcoder.W_dec.copy_(torch.randn(n_features, model.d_model, generator=generator))
        transcoder.W_dec.mul_(n_features**-0.5)
        transcoder.b_enc.zero_()
        pre = transcoder.pre_activation(inputs)  # (n, n_features)
        # torch.quantile takes at most 2**24 elements: per block of features
        cutoffs = [torch.quantile(block, 1.0 - density, dim=0) for block in pre.split(1024, dim=1)]
        transcoder.b_enc.copy_(-torch.cat(cutoffs))
    return transcoder.to(model.device)


def firing_density(transcoder: Transcoder, inputs: torch.Tensor) -> float:
    """Share of (position, feature) pairs with a positive activation."""
    with torch.no_grad():
        active = (transcoder.encode(inputs.to(transcoder.device)) > 0).sum().item()
    return active / (inputs.shape[0] * transcoder.d_transcoder)


def synchronize(model: SubjectModel) -> None:
    if model.device.type == "cuda":
        torch.cuda.synchronize(model.device)


def bare_forward(model: SubjectModel, tokens: np.ndarray, layer: int, batch_size: int) -> float:
    """Seconds of the forward passes up to ``layer``'s MLP input, nothing else."""
    synchronize(model)
    started = time.perf_counter()
    for start in range(0, len(tokens), batch_size):
        ids = torch.from_numpy(tokens[start : start + batch_size]).to(model.device)
        model.hook_values(ids, {layer: ["mlp_in"]})
    synchronize(model)
    return time.perf_counter() - started


def random_batches(
    n_contexts: int, context_length: int, n_features: int, density: float, batch_size: int
) -> list[torch.Tensor]:
    """(batch, context_length, n_features) float32 batches; each entry fires independently with
    probability ``density``, with a log-normal value (JumpReLU-like); BOS (position 0) fires
    like any other position."""
    generator = torch.Generator().manual_seed(0)
    batches = []
    for start in range(0, n_contexts, batch_size):
        shape = (min(batch_size, n_contexts - start), context_length, n_features)
        values = torch.exp(torch.randn(shape, generator=generator))
        fires = torch.rand(shape, generator=generator) < density
        batches.append(torch.where(fires, values, torch.zeros(())))
    return batches


def cache_paths(folder: str, shards: list, *, chunk: bool) -> dict:
    """Per shard, each artifact's file under ``folder``: a chunk's (``chunk``: CHUNK_ARTIFACTS,
    ``.arrow`` non-zeros and a parquet token record, as rule cache names them) or the shard
    files (ARTIFACTS, parquet)."""
    if chunk:
        extension = {"activations": "arrow", "tokens": "parquet"}
        kinds = CHUNK_ARTIFACTS
    else:
        extension = dict.fromkeys(ARTIFACTS, "parquet")
        kinds = ARTIFACTS
    return {
        shard: {kind: f"{folder}/{kind}/{shard.name}.{extension[kind]}" for kind in kinds}
        for shard in shards
    }


def write_with_cache_writer(
    batches: list[torch.Tensor], shards: list, folder: str, *, chunk: bool = True
) -> tuple[float, float]:
    """Wall and CPU seconds of ActivationCacheWriter over ``batches``, closing included:
    as rule cache runs it (``chunk``: Arrow chunk files and the token count, no maxima, no
    statistics) or as one pass over the whole corpus writes the shard files (parquet, maxima,
    final statistics)."""
    sparse_format, statistics = ("arrow", "deferred") if chunk else ("parquet", "final")
    out_paths = cache_paths(folder, shards, chunk=chunk)
    wall, cpu = time.perf_counter(), time.process_time()
    with ActivationCacheWriter(
        shards, out_paths, sparse_format=sparse_format, statistics=statistics
    ) as writer:
        first = 0
        for batch in batches:
            writer.add_batch(torch.arange(first, first + len(batch)), batch)
            first += len(batch)
    return time.perf_counter() - wall, time.process_time() - cpu


def merge_chunk(shards: list, folder: str) -> tuple[float, float]:
    """Wall and CPU seconds of merge_cache's work on the chunk written in ``folder``: every
    shard's parquet files from it, the maxima and statistics derived (one chunk: the merge's
    cost per non-zero)."""
    chunk_paths = cache_paths(folder, shards, chunk=True)
    wall, cpu = time.perf_counter(), time.process_time()
    for shard in shards:
        merged = {kind: f"{folder}/merged/{kind}/{shard.name}.parquet" for kind in ARTIFACTS}
        merge_shard([chunk_paths[shard]], merged, shard)
    return time.perf_counter() - wall, time.process_time() - cpu


def write_raw_floor(batches: list[torch.Tensor], folder: str) -> tuple[float, float]:
    """Wall and CPU seconds of the floor: each batch's non-zeros found, sorted by feature
    (stable, so (feature, context, position) order) and their five columns written raw."""
    wall, cpu = time.perf_counter(), time.process_time()
    with open(f"{folder}/raw.bin", "wb") as out:
        first = 0
        for batch in batches:
            dense = batch.numpy()
            n_positions, n_features = dense.shape[1], dense.shape[2]
            flat = np.flatnonzero(dense != 0)
            row, feature = np.divmod(flat, n_features)
            order = np.argsort(feature.astype(np.int16), kind="stable")
            row = row[order]
            feature[order].astype(np.int32).tofile(out)
            (first + row // n_positions).astype(np.int32).tofile(out)
            position = (row % n_positions).astype(np.int32)
            position.tofile(out)
            dense.reshape(-1)[flat[order]].tofile(out)
            (position == 0).tofile(out)  # the excluded column
            first += len(batch)
    return time.perf_counter() - wall, time.process_time() - cpu


def writer_only(args: argparse.Namespace) -> None:
    """Non-zeros per second of the writer alone against the raw numpy floor, same batches."""
    threads = args.threads if args.threads is not None else 1
    torch.set_num_threads(threads)
    batches = random_batches(
        args.contexts, args.context_length, args.features, args.density, args.batch_size
    )
    nnz = sum(int(torch.count_nonzero(batch)) for batch in batches)
    density = nnz / sum(batch.numel() for batch in batches)
    shards = make_shards(args.features, args.shard_size)
    times: dict[str, list[tuple[float, float]]] = {
        "writer": [],
        "floor": [],
        "merge": [],
        "parquet": [],
    }
    for _ in range(args.repeats):  # interleaved, so drifting machine load hits all
        with tempfile.TemporaryDirectory() as folder:
            times["writer"].append(write_with_cache_writer(batches, shards, folder))
            times["merge"].append(merge_chunk(shards, folder))
        with tempfile.TemporaryDirectory() as folder:
            times["floor"].append(write_raw_floor(batches, folder))
        with tempfile.TemporaryDirectory() as folder:
            times["parquet"].append(write_with_cache_writer(batches, shards, folder, chunk=False))
    wall = {name: nnz / min(w for w, _ in runs) for name, runs in times.items()}
    cpu = {name: nnz / min(c for _, c in runs) for name, runs in times.items()}
    writer_wall, writer_cpu = wall["writer"], cpu["writer"]
    floor_wall, floor_cpu = wall["floor"], cpu["floor"]
    print(
        f"writer only: {args.contexts} contexts x {args.context_length} positions x "
        f"{args.features} features in {len(shards)} shards, batch {args.batch_size} contexts, "
        f"{threads} torch thread(s), best of {args.repeats}"
    )
    print(f"firing density        : {density:8.4f}  (calibrated to {args.density}: i.i.d. entries)")
    print(f"non-zeros             : {nnz:8d}  ({nnz / len(batches):.0f} per batch)")
    print(
        f"writer                : {writer_wall / 1e6:8.2f} M non-zeros/s wall, "
        f"{writer_cpu / 1e6:.2f} M/s of process CPU time"
    )
    print(
        f"floor (numpy raw)     : {floor_wall / 1e6:8.2f} M non-zeros/s wall, "
        f"{floor_cpu / 1e6:.2f} M/s of process CPU time"
    )
    print(
        f"ratio writer / floor  : {writer_wall / floor_wall:8.2f} wall, "
        f"{writer_cpu / floor_cpu:.2f} CPU  (target writer >= 10 M/s)"
    )
    print(
        f"merge of the chunk    : {wall['merge'] / 1e6:8.2f} M non-zeros/s wall, "
        f"{cpu['merge'] / 1e6:.2f} M/s of process CPU time  (merge_cache: parquet shard "
        "files, maxima and statistics)"
    )
    print(
        f"writer, shard files   : {wall['parquet'] / 1e6:8.2f} M non-zeros/s wall, "
        f"{cpu['parquet'] / 1e6:.2f} M/s of process CPU time  (parquet, maxima, final "
        "statistics: one pass over the corpus without chunks)"
    )


def all_layer_inputs(
    model: SubjectModel, tokens: np.ndarray, layers: list[int], batch_size: int
) -> dict[int, torch.Tensor]:
    """Each layer's MLP input at non-BOS positions, from one forward per batch:
    {layer: (n_positions, d_model)} float32 on the CPU."""
    first = 1 if model.bos_token_id is not None else 0
    rows: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    for start in range(0, len(tokens), batch_size):
        ids = torch.from_numpy(tokens[start : start + batch_size]).to(model.device)
        values = model.hook_values(ids, {layer: ["mlp_in"] for layer in layers})
        for layer in layers:
            x = values[(layer, "mlp_in")]  # (batch, pos, d_model)
            rows[layer].append(x[:, first:].reshape(-1, x.shape[-1]).float().cpu())
    return {layer: torch.cat(parts) for layer, parts in rows.items()}


def forward_and_encode(
    model: SubjectModel, transcoders: dict[int, Transcoder], tokens: np.ndarray, batch_size: int
) -> float:
    """Seconds of the caching forward (every layer's input read, one pass) and every layer's
    encoder, without the writer."""
    requests = {layer: [transcoder.input_hook] for layer, transcoder in transcoders.items()}
    synchronize(model)
    started = time.perf_counter()
    for start in range(0, len(tokens), batch_size):
        ids = torch.from_numpy(tokens[start : start + batch_size]).to(model.device)
        values = model.hook_values(ids, requests)
        with torch.no_grad():
            for layer, transcoder in transcoders.items():
                transcoder.encode(values[(layer, transcoder.input_hook)])
    synchronize(model)
    return time.perf_counter() - started


def all_layers(args: argparse.Namespace) -> None:
    """Caching every layer from one forward pass against a bare forward to the deepest layer."""
    torch.set_num_threads(args.threads)
    model = load_model(args.model, args.device, getattr(torch, args.dtype), args.narrow)
    if args.layers:
        layers = sorted(int(layer) for layer in args.layers.split(","))
    elif Path(args.model) == EMBEDDED or Path(args.model).name == EMBEDDED.name:
        layers = [3, 8, 13]  # the embedded default's
    else:
        layers = list(range(model.n_layers))
    deepest = layers[-1]
    all_tokens = corpus_tokens(
        model, args.calibration_contexts + args.contexts, args.context_length
    )
    calibration, tokens = (
        all_tokens[: args.calibration_contexts],
        all_tokens[args.calibration_contexts :],
    )
    inputs = all_layer_inputs(model, calibration, layers, args.batch_size)
    transcoders = {
        layer: calibrated_transcoder(model, layer, args.features, inputs[layer], args.density)
        for layer in layers
    }
    del inputs
    measured = all_layer_inputs(model, tokens, layers, args.batch_size)
    density = {layer: firing_density(transcoders[layer], measured[layer]) for layer in layers}
    del measured
    shards = make_shards(args.features, args.shard_size)
    n_tokens = tokens.size

    bare_forward(model, tokens[: args.batch_size], deepest, args.batch_size)  # warm-up
    forward_and_encode(model, transcoders, tokens[: args.batch_size], args.batch_size)
    times: dict[str, list[tuple[float, float]]] = {"bare": [], "encode": [], "cache": []}

    def timed(name: str, run: Callable[[], object]) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        run()
        times[name].append((time.perf_counter() - wall, time.process_time() - cpu))

    def cache(repeat: int) -> None:
        """cache_layers timed alone: the removal of its files afterwards is not the job's."""
        with tempfile.TemporaryDirectory() as folder:
            out_paths = {
                layer: cache_paths(f"{folder}/layer{layer}", shards, chunk=True) for layer in layers
            }
            timed(
                "cache",
                lambda: cache_layers(
                    model,
                    transcoders,
                    np.arange(len(tokens)),
                    tokens,
                    out_paths,
                    batch_size=args.batch_size,
                    exclude_bos=True,
                    statistics="deferred",
                    sparse_format="arrow",
                    label=f"bench {repeat}",
                ),
            )

    for repeat in range(args.repeats):  # interleaved in a rotating order: drifting load hits all
        runs: list[tuple[str, Callable[[], object]]] = [
            ("bare", lambda: bare_forward(model, tokens, deepest, args.batch_size)),
            ("encode", lambda: forward_and_encode(model, transcoders, tokens, args.batch_size)),
            ("cache", functools.partial(cache, repeat)),
        ]
        for name, run in runs[repeat % 3 :] + runs[: repeat % 3]:
            if name == "cache":
                run()  # times itself
            else:
                timed(name, run)
    # tokens/s, best of the repeats: of wall time, and of this process's CPU time (all threads),
    # which other processes on a shared machine disturb less
    wall = {name: n_tokens / min(w for w, _ in runs_) for name, runs_ in times.items()}
    cpu = {name: n_tokens / min(c for _, c in runs_) for name, runs_ in times.items()}
    nnz_per_token = sum(density[layer] * args.features for layer in layers)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"all layers: model {model.name} ({args.model}) on {model.device}, {args.dtype}, "
        f"d_model {model.d_model}, {model.n_layers} layers; cached layers {layers}; "
        f"{args.features} features per layer in {len(shards)} shards; {args.contexts} contexts "
        f"x {args.context_length} tokens, batch {args.batch_size}, {args.threads} threads "
        f"(best of {args.repeats})"
    )
    print(
        "firing density         : "
        + ", ".join(f"L{layer} {density[layer]:.4f}" for layer in layers)
        + f"  (calibrated to {args.density}, timed contexts; {nnz_per_token:.0f} non-zeros/token)"
    )
    print("tokens/s (wall | of process CPU time):")
    print(f"bare forward to layer {deepest}: {wall['bare']:8.0f} | {cpu['bare']:8.0f}")
    print(f"forward + every encoder: {wall['encode']:8.0f} | {cpu['encode']:8.0f}  (no writer)")
    print(f"caching every layer    : {wall['cache']:8.0f} | {cpu['cache']:8.0f}")
    for label, top, bottom, note in (
        ("caching / bare  ", "cache", "bare", "target >= 0.85 on the CPU"),
        ("encode / bare   ", "encode", "bare", "the encoders' share"),
        ("caching / encode", "cache", "encode", "the writer's share"),
    ):
        print(
            f"ratio {label} : {wall[top] / wall[bottom]:8.2f} | "
            f"{cpu[top] / cpu[bottom]:8.2f}  ({note})"
        )
    print(f"peak resident memory   : {peak_mib:8.0f} MiB")
    if model.device.type == "cuda":
        gpu_mib = torch.cuda.max_memory_allocated(model.device) / 2**20
        print(f"peak GPU memory        : {gpu_mib:8.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(EMBEDDED) if EMBEDDED.is_dir() else "tiny-llama")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, ...")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--layer", type=int, default=None, help="default: two thirds of depth")
    parser.add_argument("--features", type=int, default=2048)
    parser.add_argument("--density", type=float, default=0.02, help="calibrated firing density")
    parser.add_argument("--calibration-contexts", type=int, default=32)
    parser.add_argument("--shard-size", type=int, default=512)
    parser.add_argument("--contexts", type=int, default=None, help="default 64; 1024 writer-only")
    parser.add_argument("--context-length", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None, help="default 2; 1 writer-only")
    parser.add_argument("--repeats", type=int, default=None, help="default 2; 5 writer-only")
    parser.add_argument(
        "--writer-only",
        action="store_true",
        help="time the sparse writer alone on random batches against a raw numpy floor",
    )
    parser.add_argument(
        "--all-layers",
        action="store_true",
        help="cache every layer of --layers from one forward against a bare forward",
    )
    parser.add_argument("--layers", default=None, help="--all-layers: e.g. 3,8,13")
    parser.add_argument(
        "--narrow", type=int, default=None, help="random:NAME at this residual width"
    )
    args = parser.parse_args()
    if not 0.0 < args.density < 1.0:
        parser.error(f"--density must be in (0, 1), got {args.density}")
    if args.all_layers:
        args.contexts = args.contexts if args.contexts is not None else 64
        args.threads = args.threads if args.threads is not None else 2
        args.repeats = args.repeats if args.repeats is not None else 3
        all_layers(args)
        return
    if args.writer_only:
        args.contexts = args.contexts if args.contexts is not None else 1024
        args.repeats = args.repeats if args.repeats is not None else 5
        writer_only(args)
        return
    args.contexts = args.contexts if args.contexts is not None else 64
    args.threads = args.threads if args.threads is not None else 2
    args.repeats = args.repeats if args.repeats is not None else 2

    torch.set_num_threads(args.threads)
    model = load_model(args.model, args.device, getattr(torch, args.dtype))
    layer = args.layer if args.layer is not None else (2 * model.n_layers) // 3
    all_tokens = corpus_tokens(
        model, args.calibration_contexts + args.contexts, args.context_length
    )
    calibration, tokens = (
        all_tokens[: args.calibration_contexts],
        all_tokens[args.calibration_contexts :],
    )
    transcoder = calibrated_transcoder(
        model,
        layer,
        args.features,
        layer_inputs(model, calibration, layer, "mlp_in", args.batch_size),
        args.density,
    )
    timed_inputs = layer_inputs(model, tokens, layer, transcoder.input_hook, args.batch_size)
    density = firing_density(transcoder, timed_inputs)
    rms = timed_inputs.pow(2).mean().sqrt().item()
    del timed_inputs
    shards = make_shards(args.features, args.shard_size)
    n_tokens = tokens.size

    bare_forward(model, tokens[: args.batch_size], layer, args.batch_size)  # warm-up
    if model.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(model.device)
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
        f"model {args.model} on {model.device}, layer {layer} (input RMS {rms:.3f}), "
        f"{args.features} features in {len(shards)} shards, {args.contexts} contexts x "
        f"{args.context_length} tokens, batch {args.batch_size}, {args.threads} threads "
        f"(best of {args.repeats})"
    )
    print(
        f"firing density         : {density:8.4f}  (calibrated to {args.density}, timed contexts)"
    )
    print(f"bare forward to layer {layer}: {bare_rate:8.0f} tokens/s")
    print(f"caching                : {cache_rate:8.0f} tokens/s")
    print(f"ratio caching / bare   : {cache_rate / bare_rate:8.2f}  (target >= 0.9)")
    print(f"peak resident memory   : {peak_mib:8.0f} MiB")
    if model.device.type == "cuda":
        gpu_mib = torch.cuda.max_memory_allocated(model.device) / 2**20
        print(f"peak GPU memory        : {gpu_mib:8.0f} MiB")


if __name__ == "__main__":
    main()
