"""The corpus: documents from a source, cut into fixed-length token contexts, split cache/eval.

Sources (:class:`CorpusSpec`, :func:`iter_documents`):

- ``gensim``: real English text shipped inside the ``gensim`` wheel's test data: an English
  Wikipedia excerpt (106 articles, wiki markup turned into plain-text paragraphs) and the Lee
  background corpus (300 news articles, one per line).
- ``files``: local ``.txt`` (one document per file, or per blank-line-separated block),
  ``.jsonl`` (one JSON object per line, field ``text_field``) and ``.parquet`` (column
  ``text_field``) files; a directory stands for the supported files under it, sorted.
- ``huggingface``: a Hugging Face dataset streamed with ``datasets.load_dataset``; only used when
  configured.

Contexts (:func:`tokenize_contexts`): documents are tokenized without special tokens, joined into
one token stream with the tokenizer's EOS between consecutive documents, and cut into chunks of
``context_length - 1`` tokens, each prefixed with the model's BOS (chunks of ``context_length``
when the model has no BOS). The trailing partial chunk is dropped.

Artifact (:func:`prepare_corpus`): one parquet file with schema
:data:`circuit_insights.data.schemas.CORPUS_TOKENS_SCHEMA`, read back with :func:`load_contexts`."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from circuit_insights.core.errors import InputError
from circuit_insights.core.io import write_parquet_atomic
from circuit_insights.data.documents import SPLITS, CorpusSpec, iter_documents
from circuit_insights.data.schemas import CORPUS_TOKENS_SCHEMA

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase
logger = logging.getLogger(__name__)


# --- tokenization -------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenizedContexts:
    """Fixed-length contexts cut from a document stream.

    ``tokens``: (n_contexts, context_length) int32. ``document``: (n_contexts,) int32, the index
    (in the order read) of the document the context's first non-BOS token comes from.
    ``n_documents``: documents read; ``n_stream_tokens``: tokens of the joined stream read
    (separators included; more than ``tokens`` holds when the last chunk or ``max_contexts``
    cut the stream).
    """

    tokens: np.ndarray
    document: np.ndarray
    n_documents: int
    n_stream_tokens: int

    @property
    def n_contexts(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def context_length(self) -> int:
        return int(self.tokens.shape[1])


class CorpusTooShort(InputError):
    """The documents hold fewer tokens than one context (or no document at all).

    ``n_documents``: documents read; ``n_stream_tokens``: tokens of their joined stream;
    ``n_needed``: stream tokens one context takes (``context_length``, less one for BOS)."""

    def __init__(self, message: str, *, n_documents: int, n_stream_tokens: int, n_needed: int):
        super().__init__(message)
        self.n_documents = n_documents
        self.n_stream_tokens = n_stream_tokens
        self.n_needed = n_needed


def _batches(documents: Iterable[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for document in documents:
        batch.append(document)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def tokenize_contexts(
    documents: Iterable[str],
    tokenizer: PreTrainedTokenizerBase,
    *,
    context_length: int,
    bos_token_id: int | None,
    max_contexts: int | None = None,
    separator_token_id: int | None | Literal["eos"] = "eos",
    batch_size: int = 256,
    source: str = "documents",
) -> TokenizedContexts:
    """Cut ``documents`` into contexts of ``context_length`` tokens, BOS first when given.

    Each document is tokenized with ``add_special_tokens=False`` (batched: the fast tokenizer's
    batch call), the documents are joined into one stream with ``separator_token_id`` between
    consecutive documents (``"eos"``: the tokenizer's ``eos_token_id``, nothing when it has
    none; ``None``: nothing), and the stream is cut into chunks of ``context_length - 1`` tokens
    each prefixed with ``bos_token_id`` (chunks of ``context_length`` when ``bos_token_id`` is
    None). The trailing partial chunk is dropped; reading stops once ``max_contexts`` contexts
    are full. A separator counts as part of the document it precedes.

    Raises :class:`CorpusTooShort` (an InputError) naming ``source`` when there are no
    documents or fewer stream tokens than one context.
    """
    if bos_token_id is not None and bos_token_id < 0:
        raise InputError(f"bos_token_id must be a token id >= 0 or None, got {bos_token_id}")
    chunk = context_length - (1 if bos_token_id is not None else 0)
    if chunk < 1:
        raise InputError(
            f"context_length {context_length} leaves no room for text"
            + (" after BOS" if bos_token_id is not None else "")
        )
    if max_contexts is not None and max_contexts <= 0:
        raise InputError(f"max_contexts must be positive, got {max_contexts}")
    if batch_size <= 0:
        raise InputError(f"batch_size must be positive, got {batch_size}")
    separator = tokenizer.eos_token_id if separator_token_id == "eos" else separator_token_id

    chunks: list[np.ndarray] = []  # (k, chunk) token blocks
    chunk_documents: list[np.ndarray] = []  # (k,) document of each block's first token
    n_contexts = 0
    n_documents = 0
    n_stream_tokens = 0
    rest_tokens = np.zeros(0, dtype=np.int64)  # tokens not yet in a full chunk
    rest_documents = np.zeros(0, dtype=np.int64)
    for batch in _batches(documents, batch_size):
        encoded = tokenizer(
            batch, add_special_tokens=False, return_attention_mask=False, verbose=False
        )["input_ids"]
        pieces = [rest_tokens]
        owners = [rest_documents]
        for ids in encoded:
            if n_documents > 0 and separator is not None:
                ids = [separator, *ids]
            pieces.append(np.asarray(ids, dtype=np.int64))
            owners.append(np.full(len(ids), n_documents, dtype=np.int64))
            n_documents += 1
        stream = np.concatenate(pieces)
        owner = np.concatenate(owners)
        n_stream_tokens += len(stream) - len(rest_tokens)
        n_full = len(stream) // chunk
        if max_contexts is not None:
            n_full = min(n_full, max_contexts - n_contexts)
        chunks.append(stream[: n_full * chunk].reshape(n_full, chunk))
        chunk_documents.append(owner[: n_full * chunk : chunk])
        n_contexts += n_full
        rest_tokens, rest_documents = stream[n_full * chunk :], owner[n_full * chunk :]
        if max_contexts is not None and n_contexts >= max_contexts:
            break

    counts = {"n_documents": n_documents, "n_stream_tokens": n_stream_tokens, "n_needed": chunk}
    if n_documents == 0:
        raise CorpusTooShort(f"corpus {source} is empty: it yielded no documents", **counts)
    if n_contexts == 0:
        raise CorpusTooShort(
            f"corpus {source} is empty: its {n_stream_tokens} tokens in {n_documents} documents "
            f"are fewer than one context of {context_length} tokens",
            **counts,
        )
    body = np.concatenate(chunks)
    if body.max() > np.iinfo(np.int32).max or body.min() < 0:
        raise InputError(f"corpus {source}: token ids do not fit int32")
    tokens = np.empty((n_contexts, context_length), dtype=np.int32)
    if bos_token_id is not None:
        tokens[:, 0] = bos_token_id
    tokens[:, context_length - chunk :] = body
    return TokenizedContexts(
        tokens=tokens,
        document=np.concatenate(chunk_documents).astype(np.int32),
        n_documents=n_documents,
        n_stream_tokens=n_stream_tokens,
    )


# --- split and table ----------------------------------------------------------------------------


def split_contexts(n: int, eval_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded random split of contexts ``0..n-1`` into (cache_idx, eval_idx), each sorted.

    The eval split gets ``round(n * eval_fraction)`` contexts, at least 1 and at most ``n - 1``;
    InputError when ``eval_fraction`` is not in (0, 1) or ``n < 2``.
    """
    if not 0.0 < eval_fraction < 1.0:
        raise InputError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
    if n < 2:
        raise InputError(
            f"{n} contexts cannot be split into non-empty cache and eval sets: need at least 2"
        )
    n_eval = min(max(round(n * eval_fraction), 1), n - 1)
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[n_eval:]), np.sort(order[:n_eval])


_ROWS_PER_CHUNK = 1 << 16


def build_token_table(
    tokens: np.ndarray, document: np.ndarray, cache_idx: np.ndarray, eval_idx: np.ndarray
) -> pa.Table:
    """The corpus table (:data:`CORPUS_TOKENS_SCHEMA`): one row per context, by context id.

    ``tokens``: (n, context_length); ``document``: (n,); ``cache_idx`` and ``eval_idx`` must
    partition ``0..n-1``.
    """
    n = tokens.shape[0]
    if tokens.ndim != 2 or document.shape != (n,):
        raise InputError(f"tokens {tokens.shape} and document {document.shape} do not match")
    split = np.full(n, "", dtype=object)
    split[cache_idx] = "cache"
    split[eval_idx] = "eval"
    if len(cache_idx) + len(eval_idx) != n or (split == "").any():
        raise InputError(f"cache_idx and eval_idx do not partition the {n} contexts")
    flat = np.ascontiguousarray(tokens, dtype=np.int32)
    length = tokens.shape[1]
    token_chunks = []
    for start in range(0, n, _ROWS_PER_CHUNK):
        block = flat[start : start + _ROWS_PER_CHUNK]
        offsets = np.arange(0, block.size + 1, length, dtype=np.int32)
        token_chunks.append(pa.ListArray.from_arrays(pa.array(offsets), pa.array(block.ravel())))
    return pa.table(
        {
            "context": pa.array(np.arange(n, dtype=np.int32)),
            "split": pa.array(split.tolist(), type=pa.string()),
            "document": pa.array(np.asarray(document, dtype=np.int32)),
            "token_ids": pa.chunked_array(token_chunks, type=pa.list_(pa.int32())),
        },
        schema=CORPUS_TOKENS_SCHEMA,
    )


def load_contexts(
    path: str | os.PathLike[str], split: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Read a corpus file: (context_ids (n,) int32, tokens (n, context_length) int32).

    ``split`` is ``"cache"``, ``"eval"`` or None (all contexts); rows come sorted by context.
    """
    path = Path(path)
    if split is not None and split not in SPLITS:
        raise InputError(f"split {split!r}: choose from {list(SPLITS)} or None")
    if not path.is_file():
        raise InputError(f"corpus file {path} does not exist")
    names = pq.read_schema(path).names
    missing = [name for name in CORPUS_TOKENS_SCHEMA.names if name not in names]
    if missing:
        raise InputError(f"corpus file {path} lacks columns {missing}")
    filters = [("split", "==", split)] if split is not None else None
    table = pq.read_table(path, columns=["context", "token_ids"], filters=filters)
    if table.num_rows == 0:
        raise InputError(f"corpus file {path} has no contexts in split {split!r}")
    table = table.sort_by("context")
    lists = table.column("token_ids").combine_chunks()
    lengths = lists.value_lengths().to_numpy(zero_copy_only=False)
    if (lengths != lengths[0]).any():
        raise InputError(f"corpus file {path}: contexts have different lengths")
    tokens = lists.flatten().to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
    context_ids = table.column("context").to_numpy().astype(np.int32, copy=False)
    return context_ids, tokens.reshape(table.num_rows, int(lengths[0]))


def _where(spec: CorpusSpec) -> str:
    """The corpus source for a message: ``corpus.paths a.txt, b.txt``, ``corpus.source gensim
    (corpus.gensim_parts lee)``, ``corpus.dataset org/name``; with ``corpus.max_documents``."""
    if spec.source == "files":
        where = f"{spec.source_key} {', '.join(spec.paths)}"
    elif spec.source == "gensim":
        where = f"corpus.source gensim, {spec.source_key} {', '.join(spec.gensim_parts)}"
    else:
        where = f"{spec.source_key} {spec.describe().removeprefix('huggingface:')}"
    if spec.max_documents is not None:
        where += f", capped at corpus.max_documents {spec.max_documents}"
    return where


def _too_short(spec: CorpusSpec, error: CorpusTooShort, *, context_length: int) -> InputError:
    """The job's message for a corpus without one full context: names the config key of the
    source (:attr:`CorpusSpec.source_key`), its files, the tokens found and
    ``corpus.context_length``."""
    if error.n_documents == 0:
        found = "no document that is not blank (0 tokens)"
    else:
        documents = "document" if error.n_documents == 1 else "documents"
        found = f"{error.n_stream_tokens} tokens in {error.n_documents} {documents}"
    bos = " (BOS aside)" if error.n_needed < context_length else ""
    return InputError(
        f"config key {spec.source_key!r}: the corpus ({_where(spec)}) holds {found}, fewer than "
        f"the {error.n_needed}{bos} that one context of corpus.context_length {context_length} "
        "needs; add text, or lower corpus.context_length"
    )


def prepare_corpus(
    spec: CorpusSpec,
    tokenizer: PreTrainedTokenizerBase,
    bos_token_id: int | None,
    context_length: int,
    max_contexts: int | None,
    eval_fraction: float,
    seed: int,
    out_path: str | os.PathLike[str],
) -> dict[str, Any]:
    """Read ``spec``'s documents, cut contexts, split them and write the parquet atomically.

    Returns (and logs) the counts: documents, stream tokens, contexts per split. The arguments
    are the workflow's ``corpus.*`` config keys, and a corpus too short for one context, or for
    one context in each split, is an InputError naming them (:func:`_too_short`).
    """
    source = spec.describe()
    try:
        contexts = tokenize_contexts(
            iter_documents(spec),
            tokenizer,
            context_length=context_length,
            bos_token_id=bos_token_id,
            max_contexts=max_contexts,
            source=source,
        )
    except CorpusTooShort as error:
        raise _too_short(spec, error, context_length=context_length) from None
    if contexts.n_contexts < 2:
        documents = "document" if contexts.n_documents == 1 else "documents"
        raise InputError(
            f"config key 'corpus.eval_fraction': {eval_fraction} of {contexts.n_contexts} context "
            f"holds out 0 contexts: the corpus ({_where(spec)}) holds {contexts.n_stream_tokens} "
            f"tokens in {contexts.n_documents} {documents}, 1 context of corpus.context_length "
            f"{context_length}, and the caching and evaluation sets need one each; add text, or "
            "lower corpus.context_length"
        )
    cache_idx, eval_idx = split_contexts(contexts.n_contexts, eval_fraction, seed)
    table = build_token_table(contexts.tokens, contexts.document, cache_idx, eval_idx)
    write_parquet_atomic(table, out_path, schema=CORPUS_TOKENS_SCHEMA)
    summary: dict[str, Any] = {
        "source": source,
        "n_documents": contexts.n_documents,
        "n_stream_tokens": contexts.n_stream_tokens,
        "n_contexts": contexts.n_contexts,
        "n_cache": int(cache_idx.size),
        "n_eval": int(eval_idx.size),
        "context_length": context_length,
        "n_tokens": contexts.n_contexts * context_length,
    }
    logger.info(
        "corpus %s: %d documents, %d stream tokens -> %d contexts of %d tokens "
        "(%d cache, %d eval) in %s",
        source,
        summary["n_documents"],
        summary["n_stream_tokens"],
        summary["n_contexts"],
        context_length,
        summary["n_cache"],
        summary["n_eval"],
        out_path,
    )
    return summary
