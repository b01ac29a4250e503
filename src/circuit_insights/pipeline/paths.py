"""The file layout of the workflow's outputs, shared by the rules and the library.

``{results}/{model}/layer{layer}/{kind}/{shard}.parquet`` for per-shard artifacts;
``{results}/{model}/corpus/tokens.parquet``; ``{results}/{model}/layer{layer}/transcoder/``;
``{results}/{model}/cache_chunks/{chunk}/`` for the cache of one corpus chunk.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

EMBEDDED_PREFIX = "embedded:"
EMBEDDED_MODELS = ("gemma-3-270m",)
EMBEDDED_LLMS = ("smollm2-135m-instruct",)


def is_embedded(source: str) -> bool:
    """Whether a model source names a model built from a registry package."""
    return source.startswith(EMBEDDED_PREFIX)


def embedded_folder(resources: str, source: str) -> str:
    """Folder of an embedded model, e.g. ``resources/models/gemma-3-270m``."""
    return f"{resources}/models/{source.removeprefix(EMBEDDED_PREFIX)}"


def model_location(resources: str, source: str) -> str:
    """Where to load a model from: the embedded folder, a local folder or a hub id."""
    return embedded_folder(resources, source) if is_embedded(source) else source


def job_model_location(source: str, model_inputs: Sequence[str] | str) -> str:
    """A job's model location: the embedded folder (from its input files) or the source itself.

    An embedded source with no input files (an LLM served at ``llm.url``: nothing is built) stays
    the source.
    """
    if is_embedded(source) and model_inputs:
        first = model_inputs if isinstance(model_inputs, str) else model_inputs[0]
        return str(Path(first).parent)
    return source


def tokens_file(results: str, model: str) -> str:
    return f"{results}/{model}/corpus/tokens.parquet"


def transcoder_dir(results: str, model: str, layer: int | str) -> str:
    return f"{results}/{model}/layer{layer}/transcoder"


def transcoder_files(results: str, model: str, layer: int | str) -> list[str]:
    folder = transcoder_dir(results, model, layer)
    return [f"{folder}/transcoder.safetensors", f"{folder}/config.json"]


def transcoder_report(results: str, model: str, layer: int | str) -> str:
    return f"{transcoder_dir(results, model, layer)}/report.json"


def mlp_pairs_dir(results: str, model: str) -> str:
    """Rule collect_pairs's output (a temporary folder): every trained layer's MLP pairs, e.g.
    ``results/m/mlp_pairs``."""
    return f"{results}/{model}/mlp_pairs"


def mlp_pairs_file(pairs_dir: str, layer: int | str) -> str:
    """One layer's MLP input/output pairs in rule collect_pairs's folder."""
    return f"{pairs_dir}/layer{layer}.safetensors"


def layer_artifact(results: str, model: str, layer: int | str, kind: str, shard: str) -> str:
    """A per-shard artifact, e.g. ``results/m/layer3/samples/f000000-000512.parquet``."""
    return f"{results}/{model}/layer{layer}/{kind}/{shard}.parquet"


def layer_table(results: str, model: str, layer: int | str, kind: str) -> str:
    """All shards of one layer's artifact in one file, e.g. ``results/m/layer3/weightlens.parquet``."""
    return f"{results}/{model}/layer{layer}/{kind}.parquet"


CACHE_KINDS = (
    "activations",
    "maxima",
    "feature_stats",
    "heldout_activations",
    "heldout_maxima",
    "heldout_feature_stats",
)
"""The per-shard cache artifacts of a layer (rule merge_cache), both corpus splits."""


def cache_chunk_dir(results: str, model: str, chunk: str) -> str:
    """Rule cache's output for one corpus chunk (every layer and shard), e.g.
    ``results/m/cache_chunks/c000000-016384``."""
    return f"{results}/{model}/cache_chunks/{chunk}"


def cache_chunk_file(chunk_dir: str, layer: int | str, kind: str, shard: str) -> str:
    """One file of a chunk's cache: ``kind`` is ``activations`` (the non-zeros: an Arrow IPC
    file, ``.arrow``, which only merge_cache reads) or ``tokens`` (parquet: the chunk's token
    count, from which with the non-zeros merge_cache derives the maxima and statistics), each
    also with the held-out split's prefix ``heldout_``."""
    extension = "parquet" if kind.endswith("tokens") else "arrow"
    return f"{chunk_dir}/layer{layer}/{kind}/{shard}.{extension}"


REPORT_STAGES = ("weightlens", "explanations", "clusters", "samples", "contributions")
"""Per-shard artifacts the report reads besides the evaluation files."""


def evaluation_file(results: str, model: str, layer: int | str, variant: str, shard: str) -> str:
    """FADE scores of one variant's descriptions of one shard."""
    return f"{results}/{model}/layer{layer}/evaluation/{variant}/{shard}.parquet"


def clean_loss_file(results: str, model: str) -> str:
    """The model's own held-out next-token loss (rule clean_loss)."""
    return f"{results}/{model}/corpus/clean_loss.json"


def rule_evaluation_file(results: str, model: str, layer: int | str, shard: str) -> str:
    """Rule-rated scores (rule evaluate_rules) of every executable explanation of one shard."""
    return f"{results}/{model}/layer{layer}/evaluation-rules/{shard}.parquet"


def delphi_scores_file(results: str, model: str, layer: int | str, rater: str, shard: str) -> str:
    """Detection, fuzzing and simulation of one shard (rules delphi_rules / delphi_llm), by
    ``rater`` ``rule`` (every executable rule, exactly) or ``llm`` (the compared descriptions)."""
    return f"{results}/{model}/layer{layer}/delphi-{rater}/{shard}.parquet"


def imported_file(results: str, model: str, name: str) -> str:
    """The rows of imported variant ``name`` (rule import_explanations), every layer's."""
    return f"{results}/{model}/imported/{name}.parquet"


def summary_file(results: str, model: str, name: str) -> str:
    """One of a model's summary outputs, e.g. ``results/m/summary/summary.parquet``."""
    return f"{results}/{model}/summary/{name}"


def report_index(results: str) -> str:
    """The run's HTML report."""
    return f"{results}/report/index.html"


#: Layer counts of the embedded models, known before they are built (for checks at start).
EMBEDDED_N_LAYERS = {"gemma-3-270m": 18}


def llm_state_file(results: str) -> str:
    """Where the run's shared LLM server records its URL and pid."""
    return f"{results}/.llm/server.json"


def llm_cache_file(results: str) -> str:
    """The run's LLM response cache (sqlite): reruns send nothing already answered."""
    return f"{results}/.llm/responses.sqlite"


def graph_dir(results: str, model: str) -> str:
    """Rule label_graph's folder: the labelled graph ``{slug}.json`` and ``graph-metadata.json``,
    what circuit-tracer's local server serves."""
    return f"{results}/{model}/graph"


def export_file(results: str, model: str) -> str:
    """Rule export's Neuronpedia explanation export of a model."""
    return f"{results}/{model}/export/neuronpedia.json"


def export_delphi_dir(results: str, model: str) -> str:
    """Rule export's delphi runs of a model (one folder per variant)."""
    return f"{results}/{model}/export/delphi"
