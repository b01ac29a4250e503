"""One function per workflow stage: what each Snakemake script calls.

Each takes the validated config blocks and paths, does the work through the library modules and
writes its outputs atomically. They are importable and testable without Snakemake.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from circuit_insights.data.io import atomic_path, write_json_atomic
from circuit_insights.data.shards import Shard
from circuit_insights.errors import InputError
from circuit_insights.models.adapters import SubjectModel, adapter_for
from circuit_insights.pipeline import paths
from circuit_insights.transcoders.base import Transcoder

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# --- models and tokenizers ---------------------------------------------------------------------


def set_threads(threads: int) -> None:
    """Use ``threads`` torch threads (small ops slow down badly when oversubscribed)."""
    torch.set_num_threads(max(1, int(threads)))


def load_subject_model(
    model_config: Mapping[str, Any],
    location: str,
    name: str = "",
    layers: Sequence[int] = (),
) -> SubjectModel:
    """Load the subject model of a config block from ``location`` (folder or hub id) and check
    that it has every one of ``layers``.

    ``model_config`` needs the keys ``pipeline.params.SUBJECT_KEYS`` only.
    """
    model = SubjectModel.from_pretrained(
        location,
        name=name or Path(location).name,
        dtype=DTYPES[model_config["dtype"]],
        device=model_config["device"],
        prepend_bos=model_config["prepend_bos"],
    )
    for layer in layers:
        model.check_layer(layer, what=f"config models.{name or model.name}.layers entry")
    return model


def load_tokenizer_and_bos(
    model_config: Mapping[str, Any], location: str
) -> tuple[Any, int | None]:
    """The model's tokenizer and the BOS id its contexts start with (None: no BOS), without weights."""
    from transformers import AutoConfig, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(location)
    except (OSError, ValueError) as exc:
        raise InputError(f"unknown model {location!r}: {exc}") from exc
    adapter = adapter_for(config.model_type)
    prepend = model_config["prepend_bos"]
    prepend = adapter.uses_bos if prepend is None else prepend
    tokenizer = AutoTokenizer.from_pretrained(location)
    bos = getattr(config, "bos_token_id", None)
    if bos is None:
        bos = tokenizer.bos_token_id
    if prepend and bos is None:
        raise InputError(f"model {location!r} should start contexts with BOS but has none")
    return tokenizer, (bos if prepend else None)


# --- corpus ----------------------------------------------------------------------------------


def run_corpus(
    model_config: Mapping[str, Any], corpus_config: Mapping[str, Any], location: str, out_path: str
) -> dict[str, Any]:
    """Rule corpus: documents -> contexts with BOS -> cache / eval split parquet."""
    from circuit_insights.data.corpus import CorpusSpec, prepare_corpus

    tokenizer, bos = load_tokenizer_and_bos(model_config, location)
    spec = CorpusSpec(
        source=corpus_config["source"],
        gensim_sources=tuple(corpus_config["gensim_parts"]),
        paths=tuple(corpus_config["paths"]),
        dataset=corpus_config["dataset"] or None,
        dataset_split=corpus_config["dataset_split"],
        text_field=corpus_config["text_field"],
        max_documents=corpus_config["max_documents"],
    )
    return prepare_corpus(
        spec,
        tokenizer,
        bos,
        corpus_config["context_length"],
        corpus_config["max_contexts"],
        corpus_config["eval_fraction"],
        corpus_config["seed"],
        out_path,
    )


# --- reading MLP inputs and outputs ------------------------------------------------------------


def iter_context_batches(
    tokens: np.ndarray, context_ids: np.ndarray, batch_size: int
) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """Consecutive batches of contexts: (context ids (batch,), token ids (batch, pos))."""
    for start in range(0, len(tokens), batch_size):
        yield (
            context_ids[start : start + batch_size],
            torch.from_numpy(tokens[start : start + batch_size].astype(np.int64)),
        )


def mlp_pairs(
    model: SubjectModel,
    tokens: np.ndarray,
    layer: int,
    input_hook: str,
    output_hook: str,
    batch_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(transcoder input, MLP output) pairs at every non-BOS position: two (n_tokens, d_model)."""
    skip_first = 1 if model.bos_token_id is not None else 0
    inputs, outputs = [], []
    for _, ids in iter_context_batches(tokens, np.arange(len(tokens)), batch_size):
        values = model.hook_values(ids, {layer: [input_hook, output_hook]})
        inputs.append(values[(layer, input_hook)][:, skip_first:].reshape(-1, model.d_model))
        outputs.append(values[(layer, output_hook)][:, skip_first:].reshape(-1, model.d_model))
    return torch.cat(inputs), torch.cat(outputs)


# --- transcoders -----------------------------------------------------------------------------


def mean_next_token_loss(model: SubjectModel, tokens: np.ndarray, batch_size: int) -> float:
    """Mean cross-entropy of next-token prediction over ``tokens`` (n, pos), BOS not predicted."""
    total, count = 0.0, 0
    for _, ids in iter_context_batches(tokens, np.arange(len(tokens)), batch_size):
        logits = model.logits(ids)  # (batch, pos, vocab)
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum"
        )
        total += float(loss)
        count += ids[:, 1:].numel()
    return total / count


def spliced_loss_report(
    model: SubjectModel, transcoder: Transcoder, layer: int, tokens: np.ndarray, batch_size: int
) -> dict[str, float]:
    """Next-token loss of the model, with the transcoder spliced in, and with the MLP zeroed."""
    clean = mean_next_token_loss(model, tokens, batch_size)
    with model.splice({layer: transcoder}):
        spliced = mean_next_token_loss(model, tokens, batch_size)
    mlp = model.block_part(layer, "mlp")
    handle = mlp.register_forward_hook(lambda _m, _a, output: torch.zeros_like(output))
    try:
        ablated = mean_next_token_loss(model, tokens, batch_size)
    finally:
        handle.remove()
    recovered = (ablated - spliced) / (ablated - clean) if ablated != clean else math.nan
    return {
        "loss_clean": clean,
        "loss_spliced": spliced,
        "loss_increase": spliced - clean,
        "loss_mlp_zero_ablated": ablated,
        "fraction_of_loss_recovered": recovered,
    }


def run_train_transcoder(
    model_config: Mapping[str, Any],
    tokens_path: str,
    layer: int,
    location: str,
    weights_path: str,
    report_path: str,
    *,
    batch_size: int = 16,
    model_name: str = "",
) -> dict[str, Any]:
    """Rule train_transcoder: MLP input -> output pairs of the caching set -> a transcoder."""
    from circuit_insights.data.corpus import load_contexts
    from circuit_insights.transcoders.training import train_transcoder

    settings = model_config["transcoders"]
    model = load_subject_model(model_config, location, model_name)
    model.check_layer(layer)
    _, cache_tokens = load_contexts(tokens_path, "cache")
    _, eval_tokens = load_contexts(tokens_path, "eval")
    train_tokens = cache_tokens[: settings["train_contexts"]]
    started = time.perf_counter()
    x, y = mlp_pairs(
        model, train_tokens, layer, settings["input_hook"], settings["output_hook"], batch_size
    )
    x_eval, y_eval = mlp_pairs(
        model, eval_tokens, layer, settings["input_hook"], settings["output_hook"], batch_size
    )
    log.info(
        "collected %d training and %d held-out token pairs in %.0f s",
        len(x),
        len(x_eval),
        time.perf_counter() - started,
    )
    transcoder, report = train_transcoder(
        [(x, y)],
        d_model=model.d_model,
        d_transcoder=settings["n_features"],
        activation=settings["activation"],
        top_k=settings["top_k"],
        l1_coefficient=settings["l1_coefficient"],
        learning_rate=settings["learning_rate"],
        steps=settings["steps"],
        seed=settings["seed"],
        batch_size=settings["batch_tokens"],
        held_out=[(x_eval, y_eval)],
        layer=layer,
        input_hook=settings["input_hook"],
        output_hook=settings["output_hook"],
    )
    summary = {
        "model": model_name,
        "layer": layer,
        "n_features": settings["n_features"],
        **report.to_dict(),
        **spliced_loss_report(model, transcoder, layer, eval_tokens, batch_size),
    }
    save_transcoder_files(transcoder, weights_path)
    write_json_atomic(summary, report_path)
    log.info("transcoder layer %d: %s", layer, summary)
    return summary


def save_transcoder_files(transcoder: Transcoder, weights_path: str) -> None:
    """Save a transcoder in the native format; each file appears by an atomic rename."""
    folder = Path(weights_path).parent
    staging = folder / ".staging"
    transcoder.save(staging)
    for file in sorted(staging.iterdir(), key=lambda f: f.suffix != ".safetensors"):
        with atomic_path(folder / file.name) as tmp:
            tmp.write_bytes(file.read_bytes())
        file.unlink()
    staging.rmdir()


def transcoder_location(model_config: Mapping[str, Any], inputs: Sequence[str], layer: int) -> str:
    """Where a layer's transcoder is: the trained files' folder (job inputs) or the configured path.

    A configured ``hf://`` path is downloaded here (call it inside the job that loads the
    transcoder, never while the DAG is built); a local template is only formatted.
    """
    from circuit_insights.transcoders.registry import resolve_transcoder_path

    settings = model_config["transcoders"]
    if settings["kind"] == "train":
        return str(Path(inputs[0]).parent)
    return str(resolve_transcoder_path(settings["path"], layer, fmt=settings["format"]))


def load_layer_transcoder(
    model_config: Mapping[str, Any], model: SubjectModel, layer: int, path: str, model_name: str
) -> Transcoder:
    """The transcoder of ``layer`` at ``path``: trained here (native) or in a published format."""
    from circuit_insights.transcoders.formats import load_transcoder

    settings = model_config["transcoders"]
    fmt = "native" if settings["kind"] == "train" else settings["format"]
    transcoder = load_transcoder(path, fmt, layer=layer, d_model=model.d_model)
    if transcoder.n_features != settings["n_features"]:
        raise InputError(
            f"transcoder {path} has {transcoder.n_features} features but config key "
            f"'models.{model_name}.transcoders.n_features' says {settings['n_features']}"
        )
    for key in ("input_hook", "output_hook"):
        if settings.get(key) and settings[key] != getattr(transcoder, key):
            raise InputError(
                f"transcoder {path} is attached at {getattr(transcoder, key)} but config key "
                f"'models.{model_name}.transcoders.{key}' says {settings[key]} "
                "(leave it null to take the file's hook)"
            )
    return transcoder.to(model.device)


# --- activation cache --------------------------------------------------------------------------

CACHE_SPLITS = {"cache": "", "eval": "heldout_"}
"""Corpus split -> prefix of its artifact kinds (activations, maxima, feature_stats)."""


def cache_artifact_paths(
    results: str, model_name: str, layer: int, shards: Sequence[Shard], prefix: str
) -> dict[Shard, dict[str, str]]:
    """Output paths of one split's cache artifacts, per shard, in the workflow's layout."""
    from circuit_insights.data.cache import ARTIFACTS

    return {
        shard: {
            artifact: paths.layer_artifact(
                results, model_name, layer, prefix + artifact, shard.name
            )
            for artifact in ARTIFACTS
        }
        for shard in shards
    }


def cache_paths_from_outputs(
    outputs: Mapping[str, Sequence[str]], prefix: str
) -> dict[Shard, dict[str, str]]:
    """Per-shard cache paths of one split from a job's named outputs (kind -> file list)."""
    from circuit_insights.data.cache import ARTIFACTS
    from circuit_insights.data.shards import parse_shard

    by_shard: dict[Shard, dict[str, str]] = {}
    for artifact in ARTIFACTS:
        for path in outputs[prefix + artifact]:
            by_shard.setdefault(parse_shard(paths.shard_of(path)), {})[artifact] = str(path)
    return by_shard


def cache_split(
    model: SubjectModel,
    transcoder: Transcoder,
    layer: int,
    context_ids: np.ndarray,
    tokens: np.ndarray,
    shards: Sequence[Shard],
    out_paths: Mapping[Shard, Mapping[str, str]],
    *,
    batch_size: int,
    exclude_bos: bool,
    label: str = "cache",
) -> dict[str, float]:
    """Stream one split's contexts through the model and the transcoder into the sparse cache."""
    from circuit_insights.data.cache import ActivationCacheWriter

    excluded = {0} if exclude_bos and model.bos_token_id is not None else set()
    start, stop = min(s.start for s in shards), max(s.stop for s in shards)
    n_tokens, started, last_report = 0, time.perf_counter(), time.perf_counter()
    with ActivationCacheWriter(
        shards, out_paths, exclude_positions=frozenset(excluded), feature_offset=start
    ) as writer:
        for batch_ids, ids in iter_context_batches(tokens, context_ids, batch_size):
            x = model.hook_values(ids, {layer: [transcoder.input_hook]})[
                (layer, transcoder.input_hook)
            ]  # (batch, pos, d_model)
            with torch.no_grad():
                activations = transcoder.encode_slice(x, start, stop)  # (batch, pos, stop - start)
            writer.add_batch(torch.from_numpy(batch_ids.astype(np.int64)), activations)
            n_tokens += ids.numel()
            if time.perf_counter() - last_report > 30:
                last_report = time.perf_counter()
                rate = n_tokens / (last_report - started)
                remaining = (tokens.size - n_tokens) / rate
                log.info(
                    "%s layer %d: %d / %d tokens, %.0f tok/s, about %.0f s left",
                    label,
                    layer,
                    n_tokens,
                    tokens.size,
                    rate,
                    remaining,
                )
    seconds = time.perf_counter() - started
    log.info(
        "%s layer %d: %d tokens in %.1f s (%.0f tok/s)",
        label,
        layer,
        n_tokens,
        seconds,
        n_tokens / seconds,
    )
    return {"tokens": n_tokens, "seconds": seconds}


def run_cache(
    model_config: Mapping[str, Any],
    cache_config: Mapping[str, Any],
    tokens_path: str,
    layer: int,
    location: str,
    transcoder_path: str,
    outputs: Mapping[str, Sequence[str]],
    model_name: str,
) -> None:
    """Rule cache: the caching split and the held-out split, every shard of one layer.

    ``outputs`` maps each artifact kind (``activations``, ``heldout_maxima``, ...) to its files.
    """
    from circuit_insights.data.corpus import load_contexts

    model = load_subject_model(model_config, location, model_name)
    model.check_layer(layer)
    transcoder = load_layer_transcoder(model_config, model, layer, transcoder_path, model_name)
    for split, prefix in CACHE_SPLITS.items():
        context_ids, tokens = load_contexts(tokens_path, split)
        out_paths = cache_paths_from_outputs(outputs, prefix)
        cache_split(
            model,
            transcoder,
            layer,
            context_ids,
            tokens,
            sorted(out_paths),
            out_paths,
            batch_size=cache_config["batch_size"],
            exclude_bos=cache_config["exclude_bos"],
            label=split,
        )


# --- sampling --------------------------------------------------------------------------------


def run_sample(
    maxima_path: str,
    tokens_path: str,
    shard_name: str,
    sampling_config: Mapping[str, Any],
    out_path: str,
) -> None:
    """Rule sample: quantile, top-k and negative contexts of every feature of one shard."""
    from circuit_insights.data.corpus import load_contexts
    from circuit_insights.data.sampling import SamplingConfig, write_shard_samples
    from circuit_insights.data.shards import parse_shard

    context_ids, tokens = load_contexts(tokens_path, "cache")
    frame = write_shard_samples(
        maxima_path,
        context_ids,
        parse_shard(shard_name),
        SamplingConfig(**sampling_config),
        context_length=tokens.shape[1],
        out_path=out_path,
    )
    log.info(
        "shard %s: %d samples of %d features",
        shard_name,
        len(frame),
        frame["feature"].nunique() if len(frame) else 0,
    )


def run_select_features(
    samples_path: str,
    shard_name: str,
    explain_config: Mapping[str, Any],
    out_path: str,
) -> None:
    """Rule select_features: the seeded draw of the features later stages work on."""
    import pandas as pd

    from circuit_insights.data.selection import select_features, write_selection
    from circuit_insights.data.shards import parse_shard

    selection = select_features(
        pd.read_parquet(samples_path),
        parse_shard(shard_name),
        features_per_shard=explain_config["features_per_shard"],
        min_samples=explain_config["min_samples"],
        seed=explain_config["seed"],
    )
    write_selection(selection, out_path)
    log.info(
        "shard %s: %d of %d eligible features selected",
        shard_name,
        int(selection["selected"].sum()),
        len(selection),
    )


# --- WeightLens --------------------------------------------------------------------------------


def load_transcoders(
    model_config: Mapping[str, Any],
    model: SubjectModel,
    locations: Mapping[int, str],
    model_name: str,
) -> dict[int, Transcoder]:
    """The transcoders of several layers: layer -> location (folder of trained files or template)."""
    return {
        layer: load_layer_transcoder(model_config, model, layer, location, model_name)
        for layer, location in sorted(locations.items())
    }


def run_weightlens_stage(
    model_config: Mapping[str, Any],
    weightlens_config: Mapping[str, Any],
    location: str,
    layer: int,
    shard_name: str,
    transcoder_locations: Mapping[int, str],
    upstream_files: Mapping[int, Sequence[str]],
    samples_path: str,
    heldout_path: str,
    tokens_path: str,
    out_path: str,
    model_name: str,
) -> None:
    """Rule weightlens: token explanations of one shard from weights, validated single-token.

    Upstream layers' results are read from their parquet files (never recomputed).
    """
    import pandas as pd

    from circuit_insights.data.corpus import load_contexts
    from circuit_insights.data.shards import parse_shard
    from circuit_insights.weightlens import (
        ContextTokens,
        HeldOut,
        TopContexts,
        WeightLensOptions,
        read_weightlens,
        run_weightlens,
        thresholds_for,
        write_weightlens,
    )

    model = load_subject_model(model_config, location, model_name, sorted(transcoder_locations))
    transcoders = load_transcoders(model_config, model, transcoder_locations, model_name)
    settings = model_config["weightlens"]
    overrides = {k: settings[k] for k in ("t_tok", "t_up") if settings[k] is not None}
    thresholds = thresholds_for(model.adapter.family, settings["preset"], **overrides)
    upstream = {up: read_weightlens(files) for up, files in sorted(upstream_files.items())}
    cache_corpus = ContextTokens(*load_contexts(tokens_path, "cache"))
    eval_corpus = ContextTokens(*load_contexts(tokens_path, "eval"))
    samples = pd.read_parquet(samples_path)
    frame = run_weightlens(
        model,
        transcoders,
        layer,
        parse_shard(shard_name),
        upstream,
        thresholds,
        top_contexts=TopContexts(samples[samples["kind"] == "top"], cache_corpus),
        heldout=HeldOut(pd.read_parquet(heldout_path), eval_corpus),
        options=WeightLensOptions(
            projection=weightlens_config["projection"],
            min_token_share=weightlens_config["min_token_share"],
            batch_size=weightlens_config["batch_size"],
            heldout_positive_fraction=weightlens_config["heldout_positive_fraction"],
        ),
    )
    write_weightlens(frame, out_path)
    token_based = int((frame["classification"] == "token_based").sum()) if len(frame) else 0
    log.info(
        "layer %d shard %s: %d features, %d token-based", layer, shard_name, len(frame), token_based
    )


# --- CircuitLens attribution -------------------------------------------------------------------


def attribution_requests(
    samples: Any,
    tokens: np.ndarray,
    context_ids: np.ndarray,
    *,
    samples_per_feature: int | None,
    output_k: int,
    features: Sequence[int] | None = None,
) -> list[Any]:
    """Requests for the quantile samples of a shard: each context cut ``output_k`` tokens after
    its target (the target's own pre-activation sees nothing after it; the output side needs the
    following tokens). ``sample_id`` is the sample's draw rank."""
    from circuit_insights.circuitlens.attribution import AttributionRequest

    quantile = samples[samples["kind"] == "quantile"].sort_values(["feature", "rank"])
    if features is not None:
        quantile = quantile[quantile["feature"].isin(list(features))]
    if samples_per_feature is not None:
        quantile = quantile[quantile["rank"] < samples_per_feature]
    row_of = {int(context): row for row, context in enumerate(context_ids)}
    requests = []
    for sample in quantile.itertuples():
        context = tokens[row_of[int(sample.context)]]
        stop = min(int(sample.target_position) + output_k + 1, len(context))
        requests.append(
            AttributionRequest(
                context_tokens=[int(token) for token in context[:stop]],
                target_position=int(sample.target_position),
                feature=int(sample.feature),
                sample_id=int(sample.rank),
            )
        )
    return requests


def run_attribution_stage(
    model_config: Mapping[str, Any],
    attribution_config: Mapping[str, Any],
    location: str,
    layer: int,
    transcoder_locations: Mapping[int, str],
    selection_path: str | None,
    samples_path: str,
    tokens_path: str,
    contributions_path: str,
    totals_path: str,
    model_name: str,
) -> None:
    """Rule attribution: CircuitLens contributions of every quantile sample of one shard."""
    import pandas as pd

    from circuit_insights.circuitlens.attribution import attribute
    from circuit_insights.data.corpus import load_contexts
    from circuit_insights.data.io import write_parquet_atomic
    from circuit_insights.data.schemas import (
        ATTRIBUTION_CONTRIBUTIONS_SCHEMA,
        ATTRIBUTION_TOTALS_SCHEMA,
    )
    from circuit_insights.data.selection import selected_features

    model = load_subject_model(model_config, location, model_name, sorted(transcoder_locations))
    transcoders = load_transcoders(model_config, model, transcoder_locations, model_name)
    context_ids, tokens = load_contexts(tokens_path, "cache")
    samples = pd.read_parquet(samples_path)
    features = None
    if not attribution_config["all_features"]:
        if selection_path is None:
            raise InputError(
                "attribution of the selected features (config key 'attribution.all_features' "
                "false) needs the feature selection file"
            )
        features = selected_features(selection_path)
    requests = attribution_requests(
        samples,
        tokens,
        context_ids,
        samples_per_feature=attribution_config["samples_per_feature"],
        output_k=attribution_config["output_k"],
        features=features,
    )
    started = time.perf_counter()
    result = attribute(
        model,
        transcoders,
        layer,
        requests,
        batch_size=attribution_config["batch_size"],
        threshold=attribution_config["threshold"],
        keep_top=attribution_config["keep_top"],
        output_k=attribution_config["output_k"],
        top_tokens=attribution_config["top_tokens"],
    )
    seconds = time.perf_counter() - started
    write_parquet_atomic(
        result.contributions_table(), contributions_path, ATTRIBUTION_CONTRIBUTIONS_SCHEMA
    )
    write_parquet_atomic(result.totals_table(), totals_path, ATTRIBUTION_TOTALS_SCHEMA)
    log.info(
        "layer %d: %d (feature, sample) pairs in %.0f s (%.2f pairs/s), %d contributions",
        layer,
        len(requests),
        seconds,
        len(requests) / max(seconds, 1e-9),
        len(result.contributions),
    )


# --- the LLM -----------------------------------------------------------------------------------


def server_python(llm_config: Mapping[str, Any]) -> str:
    """The Python that runs the vLLM server (the project's .venv-llm when it exists)."""
    import sys

    if llm_config["server_python"]:
        return llm_config["server_python"]
    candidate = Path(".venv-llm/bin/python")
    return str(candidate.absolute()) if candidate.exists() else sys.executable


def llm_backend(
    llm_config: Mapping[str, Any], model_location: str, state_file: str, cache_file: str
) -> Any:
    """The run's LLM behind the response cache: a configured URL, or the shared vLLM server
    (started by the first job that needs it; the workflow stops it at the end)."""
    from circuit_insights.llm.client import CachedBackend, OpenAICompatibleBackend, ResponseCache
    from circuit_insights.llm.server import backend_from_state, ensure_shared_server

    options = {
        "concurrency": llm_config["concurrency"],
        "timeout_s": llm_config["timeout_s"],
        "max_retries": llm_config["max_retries"],
    }
    if llm_config["url"]:
        inner = OpenAICompatibleBackend(
            llm_config["url"],
            llm_config["model"],
            api_key_env=llm_config["api_key_env"] or None,
            **options,
        )
    else:
        Path(state_file).parent.mkdir(parents=True, exist_ok=True)
        ensure_shared_server(
            model_location,
            state_file,
            served_model_name=llm_config["served_model_name"],
            kv_cache_space_gib=llm_config["kv_cache_gib"],
            startup_timeout_s=llm_config["startup_timeout_s"],
            python=server_python(llm_config),
            log_path=str(Path(state_file).with_suffix(".log")),
        )
        inner = backend_from_state(state_file, **options)
    Path(cache_file).parent.mkdir(parents=True, exist_ok=True)
    return CachedBackend(inner, ResponseCache(cache_file))


# --- clustering and explanations -----------------------------------------------------------------


def run_cluster_stage(
    clustering_config: Mapping[str, Any],
    contributions_path: str,
    totals_path: str,
    weightlens_path: str,
    tokenizer_location: str,
    clusters_path: str,
    assignments_path: str,
) -> None:
    """Rule cluster: each feature's samples clustered by their circuits (contribution sets)."""
    import pandas as pd
    from transformers import AutoTokenizer

    from circuit_insights.circuitlens.clustering import (
        ClusteringConfig,
        cluster_shard,
        write_clusters,
    )

    clusters, assignments = cluster_shard(
        pd.read_parquet(contributions_path),
        pd.read_parquet(totals_path),
        pd.read_parquet(weightlens_path),
        AutoTokenizer.from_pretrained(tokenizer_location),
        ClusteringConfig.from_mapping(clustering_config),
    )
    write_clusters(clusters, assignments, clusters_path, assignments_path)
    real = clusters[clusters["cluster"] >= 0]
    per_feature = real.groupby("feature").size()
    log.info(
        "%d features clustered, %.2f clusters per feature on average",
        assignments["feature"].nunique(),
        per_feature.mean() if len(per_feature) else 0.0,
    )


def run_explain_stage(
    model_config: Mapping[str, Any],
    explain_config: Mapping[str, Any],
    llm_config: Mapping[str, Any],
    model_location: str,
    llm_location: str,
    layer: int,
    shard_name: str,
    selection_path: str,
    weightlens_path: str,
    clusters_path: str,
    samples_path: str,
    tokens_path: str,
    out_path: str,
    llm_files: tuple[str, str],
) -> None:
    """Rule explain: descriptions of the chosen features of a shard by every variant."""
    import pandas as pd

    from circuit_insights.data.corpus import load_contexts
    from circuit_insights.data.selection import quantile_sample_counts, selected_features
    from circuit_insights.explain import (
        LLM_VARIANTS,
        RULE_VARIANTS,
        ExplainConfig,
        build_feature_inputs,
        explain_shard,
        unexplained_rows,
        write_explanations,
    )

    tokenizer, bos = load_tokenizer_and_bos(model_config, model_location)
    samples = pd.read_parquet(samples_path)
    features = selected_features(selection_path)
    weightlens_df = pd.read_parquet(weightlens_path)
    variants = list(explain_config["variants"])
    rule_variants = [v for v in variants if v in RULE_VARIANTS]
    llm_variants = [v for v in variants if v in LLM_VARIANTS]
    shard_features = sorted(int(f) for f in weightlens_df["feature"])
    rule_features = (
        shard_features
        if explain_config["rule_variants_for_every_feature"] and rule_variants
        else features
    )
    # "Every feature" (features_per_shard null): those the LLM is not asked about get rows too.
    every = explain_config["features_per_shard"] is None and llm_variants
    unexplained = sorted(set(shard_features) - set(features)) if every else []
    context_ids, tokens = load_contexts(tokens_path, "cache")
    config = ExplainConfig(
        **explain_config.get("prompt", {}),
        max_answer_tokens=llm_config["max_tokens"],
        repetition_penalty=llm_config["repetition_penalty"],
        retry_max_tokens=llm_config["retry_max_tokens"],
    )
    inputs = build_feature_inputs(
        layer=layer,
        features=sorted(set(features) | set(rule_features) | set(unexplained)),
        weightlens_df=weightlens_df,
        clusters_df=pd.read_parquet(clusters_path),
        samples_df=samples,
        context_ids=context_ids,
        tokens=tokens,
        tokenizer=tokenizer,
        bos_token_id=bos,
        config=config,
    )
    backend = (
        llm_backend(llm_config, llm_location, *llm_files) if llm_variants and features else None
    )
    started = time.perf_counter()
    frames = [
        explain_shard(None, {f: inputs[f] for f in rule_features}, rule_variants, config),
        explain_shard(backend, {f: inputs[f] for f in features}, llm_variants, config),
    ]
    if unexplained:
        counts = quantile_sample_counts(samples)
        min_samples = explain_config["min_samples"]
        reasons = {
            f: (
                f"{counts[f]} quantile samples, fewer than explain.min_samples={min_samples}"
                if counts.get(f)
                else "the feature never fires on the caching set"
            )
            for f in unexplained
        }
        frames.append(unexplained_rows(inputs, llm_variants, reasons))
    frame = pd.concat([f for f in frames if len(f)] or frames[:1], ignore_index=True)
    order = frame["variant"].map({v: i for i, v in enumerate(variants)})
    frame = frame.iloc[np.lexsort((order.to_numpy(), frame["feature"].to_numpy()))]
    write_explanations(frame, out_path)
    final = frame[frame["is_final"]]
    log.info(
        "layer %d shard %s: LLM-free variants %s on %d features, LLM variants %s on %d; "
        "%.0f s; parse status %s",
        layer,
        shard_name,
        rule_variants,
        len(rule_features),
        llm_variants,
        len(features),
        time.perf_counter() - started,
        final["parse_status"].value_counts().to_dict() if len(final) else {},
    )


# --- FADE evaluation ---------------------------------------------------------------------------


def run_evaluate_stage(
    model_config: Mapping[str, Any],
    evaluate_config: Mapping[str, Any],
    llm_config: Mapping[str, Any],
    model_location: str,
    llm_location: str,
    layer: int,
    variant: str,
    transcoder_path: str,
    selection_path: str,
    explanations_path: str,
    heldout_path: str,
    feature_stats_path: str,
    tokens_path: str,
    out_path: str,
    llm_files: tuple[str, str],
    model_name: str,
) -> None:
    """Rule evaluate: FADE scores of one variant's descriptions of one shard."""
    import pandas as pd

    from circuit_insights.data.corpus import load_contexts
    from circuit_insights.data.selection import selected_features
    from circuit_insights.evaluation.fade import evaluate_descriptions, write_fade_evaluation
    from circuit_insights.explain import features_with_every_variant, final_descriptions

    final = final_descriptions(pd.read_parquet(explanations_path))
    final = final[final["feature"].isin(selected_features(selection_path))]
    compared = features_with_every_variant(
        final, evaluate_config["variants"], evaluate_config["features_per_shard"]
    )
    descriptions = final[(final["variant"] == variant) & final["feature"].isin(compared)]
    descriptions = descriptions.sort_values("feature")
    model = load_subject_model(model_config, model_location, model_name, [layer])
    transcoder = load_layer_transcoder(model_config, model, layer, transcoder_path, model_name)
    stats = pd.read_parquet(feature_stats_path)
    max_activations = dict(zip(stats["feature"].astype(int), stats["max_activation"], strict=True))
    backend = llm_backend(llm_config, llm_location, *llm_files)
    started = time.perf_counter()
    frame = evaluate_descriptions(
        model,
        transcoder,
        descriptions,
        pd.read_parquet(heldout_path),
        load_contexts(tokens_path, "eval"),
        backend,
        evaluate_config["preset"],
        evaluate_config["seed"],
        max_activations=max_activations,
    )
    write_fade_evaluation(frame, out_path)
    log.info(
        "layer %d variant %s: %d features scored in %.0f s",
        layer,
        variant,
        len(frame),
        time.perf_counter() - started,
    )


# --- summary and report ------------------------------------------------------------------------


def run_summarize_stage(
    model_config: Mapping[str, Any],
    evaluation_files: Sequence[str],
    weightlens_files: Sequence[str],
    out_dir: str,
    model_name: str,
) -> None:
    """Rule summarize: per-model summary parquet, tables in the paper's form, plots."""
    import pandas as pd

    from circuit_insights.report.summary import paper_family, write_summary

    written = write_summary(
        [pd.read_parquet(path) for path in evaluation_files],
        [pd.read_parquet(path) for path in weightlens_files],
        out_dir,
        model=model_name,
        family=paper_family(model_config["source"]) or paper_family(model_name),
    )
    log.info("summary of %s: %s", model_name, ", ".join(sorted(written)))


def run_report_stage(
    results: str, model_locations: Mapping[str, str], out_index: str, max_features: int | None
) -> None:
    """Rule report: the static HTML report of the run (opens from disk, no server)."""
    from transformers import AutoTokenizer

    from circuit_insights.report.html import build_report

    tokenizers = {
        name: AutoTokenizer.from_pretrained(location) for name, location in model_locations.items()
    }
    index = build_report(results, Path(out_index).parent, tokenizers, max_features)
    log.info("report written: %s", index)
