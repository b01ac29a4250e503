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
:data:`circuit_insights.data.schemas.CORPUS_TOKENS_SCHEMA`, read back with :func:`load_contexts`.
"""

from __future__ import annotations

import bz2
import codecs
import importlib
import json
import logging
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from circuit_insights.core.errors import InputError
from circuit_insights.core.io import write_parquet_atomic
from circuit_insights.data.schemas import CORPUS_TOKENS_SCHEMA

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

SourceKind = Literal["gensim", "files", "huggingface"]
SOURCE_KINDS: tuple[str, ...] = ("gensim", "files", "huggingface")
SPLITS: tuple[str, ...] = ("cache", "eval")

# --- gensim test data ---------------------------------------------------------------------------

GENSIM_FILES: dict[str, str] = {
    "wikipedia": "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2",
    "lee": "lee_background.cor",
}

# Sections after which a Wikipedia article holds only references and link lists.
_WIKI_DROPPED_SECTIONS = frozenset(
    {
        "references",
        "notes",
        "footnotes",
        "citations",
        "sources",
        "bibliography",
        "further reading",
        "external links",
        "see also",
        "works cited",
        "notes and references",
        "references and notes",
        "general references",
        "explanatory notes",
        "primary sources",
        "secondary sources",
        "gallery",
    }
)
_WIKI_HEADING = re.compile(r"^(={2,6})\s*(.+?)\s*\1\s*$")
_WIKI_LIST_PREFIX = re.compile(r"^[*#:;]+\s*")
_WIKI_LEFTOVER = ("|", "[[", "]]", "{{", "}}", "{|")
_WIKI_NON_TEXT_PREFIX = ("file:", "image:", "category:")
_WORD_WITH_LETTERS = re.compile(r"[^\W\d_]{2,}")
_MIN_WORDS_PER_LINE = 4


def _gensim_test_file(name: str) -> Path:
    """Path of ``name`` in gensim's ``test/test_data`` folder; InputError if unavailable."""
    try:
        gensim_dir = Path(importlib.import_module("gensim").__file__ or "").parent
    except ImportError as error:
        raise InputError(
            "corpus source 'gensim' needs the package 'gensim' "
            "(pip install 'gensim==4.4.0' or the 'embedded' extra)"
        ) from error
    path = gensim_dir / "test" / "test_data" / name
    if not path.is_file():
        raise InputError(f"gensim test data file {path} is missing from the 'gensim' package")
    return path


def _clean_inline(line: str) -> str:
    """Drop bold/italic quotes and the punctuation debris removed templates leave behind."""
    line = line.replace("\xa0", " ")
    line = re.sub(r"'{2,}", "", line)  # '''bold''', ''italic''
    line = re.sub(r"\(\s*[,;:]+\s*", "(", line)  # "( , i.e." after a removed template
    for _ in range(2):
        line = re.sub(r"\(\s*\)", "", line)  # "()" after a removed template
    line = re.sub(r"\s+([,.;:!?)])", r"\1", line)
    line = re.sub(r",(\s*,)+", ",", line)
    return re.sub(r"\s{2,}", " ", line).strip()


def wiki_to_text(raw: str) -> str:
    """Turn one page of wiki markup into plain-text paragraphs separated by blank lines.

    ``gensim.corpora.wikicorpus.filter_wiki`` removes templates, links, tables, refs and tags;
    then bold/italic quotes are dropped, headings become their own paragraph (kept only when
    some text follows them), reference sections (References, External links, See also, ...)
    are dropped, list markers are stripped (consecutive list items stay on consecutive lines),
    and lines with leftover markup or fewer than four words (table cells, captions) are dropped.
    """
    from gensim.corpora.wikicorpus import filter_wiki

    blocks: list[list[str]] = []
    pending_headings: list[tuple[int, str]] = []
    skip_level: int | None = None  # inside a dropped section of this heading level
    previous_was_list_item = False
    for raw_line in filter_wiki(raw).splitlines():
        stripped = raw_line.strip()
        heading = _WIKI_HEADING.match(stripped)
        if heading is not None:
            level, title = len(heading.group(1)), _clean_inline(heading.group(2))
            if skip_level is not None and level > skip_level:
                continue
            skip_level = level if title.lower() in _WIKI_DROPPED_SECTIONS else None
            pending_headings = [(lv, t) for lv, t in pending_headings if lv < level]
            if skip_level is None and title:
                pending_headings.append((level, title))
            previous_was_list_item = False
            continue
        if skip_level is not None:
            continue
        is_list_item = _WIKI_LIST_PREFIX.match(stripped) is not None
        line = _clean_inline(_WIKI_LIST_PREFIX.sub("", stripped))
        if (
            any(token in line for token in _WIKI_LEFTOVER)
            or line.lower().startswith(_WIKI_NON_TEXT_PREFIX)
            or len(_WORD_WITH_LETTERS.findall(line)) < _MIN_WORDS_PER_LINE
        ):
            previous_was_list_item = False
            continue
        blocks.extend([title] for _, title in pending_headings)
        pending_headings = []
        if is_list_item and previous_was_list_item:
            blocks[-1].append(line)
        else:
            blocks.append([line])
        previous_was_list_item = is_list_item
    return "\n\n".join("\n".join(block) for block in blocks)


def wikipedia_documents(path: str | os.PathLike[str] | None = None) -> Iterator[str]:
    """Yield the plain text of each article (namespace 0, no redirects) in a bz2 wiki dump.

    ``path`` defaults to the English Wikipedia excerpt in gensim's test data.
    """
    from gensim.corpora.wikicorpus import extract_pages

    dump = Path(path) if path is not None else _gensim_test_file(GENSIM_FILES["wikipedia"])
    with bz2.open(dump, "rb") as handle:
        for _title, raw, _page_id in extract_pages(handle, filter_namespaces=("0",)):
            if not raw or raw.lstrip().lower().startswith("#redirect"):
                continue  # another namespace (text blanked by extract_pages) or a redirect
            text = wiki_to_text(raw)
            if text:
                yield text


def lee_documents() -> Iterator[str]:
    """Yield the 300 news articles of gensim's ``lee_background.cor`` (one per line)."""
    path = _gensim_test_file(GENSIM_FILES["lee"])
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                yield line.strip()


def gensim_documents(which: Sequence[str] = ("wikipedia", "lee")) -> Iterator[str]:
    """Yield the documents of the named gensim test-data sources, in the order given."""
    unknown = [name for name in which if name not in GENSIM_FILES]
    if unknown or not which:
        raise InputError(f"corpus.gensim_parts {list(which)!r}: choose from {sorted(GENSIM_FILES)}")
    for name in which:
        yield from (wikipedia_documents() if name == "wikipedia" else lee_documents())


# --- local files --------------------------------------------------------------------------------

FILE_EXTENSIONS: tuple[str, ...] = (".txt", ".jsonl", ".parquet")
TxtDocuments = Literal["file", "paragraph"]


def _expand_paths(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Files behind ``paths``: a directory stands for its supported files (recursive, sorted)."""
    expanded: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            expanded.extend(
                sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in FILE_EXTENSIONS)
            )
        elif not path.exists():
            raise InputError(f"corpus file {path} does not exist")
        elif path.suffix not in FILE_EXTENSIONS:
            raise InputError(
                f"corpus file {path} has unknown extension {path.suffix!r}: "
                f"expected one of {list(FILE_EXTENSIONS)}"
            )
        else:
            expanded.append(path)
    return expanded


TEXT_CHECK_BYTES = 1 << 16
"""Bytes of a text corpus file read at start to tell text from a binary file."""


def _not_text(path: Path, error: UnicodeDecodeError) -> InputError:
    return InputError(
        f"corpus file {path} is not UTF-8 text (byte {error.start}: {error.reason}); "
        "is it a binary file?"
    )


def check_text_file(path: str | os.PathLike[str], limit: int = TEXT_CHECK_BYTES) -> None:
    """Raise :class:`InputError` naming ``path`` when its first ``limit`` bytes are not UTF-8
    text (a NUL byte, or bytes that do not decode): a binary file under a ``.txt`` name."""
    path = Path(path)
    with open(path, "rb") as handle:
        head = handle.read(limit)
    nul = head.find(b"\x00")
    if nul >= 0:
        raise InputError(f"corpus file {path} is binary (NUL byte at offset {nul}), not UTF-8 text")
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        decoder.decode(head, final=len(head) < limit)  # a character cut at the limit is fine
    except UnicodeDecodeError as error:
        raise _not_text(path, error) from None


def _read_text(path: Path) -> str:
    """A UTF-8 text file's contents; :class:`InputError` naming the file when it is not text."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise _not_text(path, error) from None


def _text_lines(path: Path, handle: Iterable[str]) -> Iterator[str]:
    """The lines of an open UTF-8 text file; :class:`InputError` naming it when one is not text."""
    try:
        yield from handle
    except UnicodeDecodeError as error:
        raise _not_text(path, error) from None


def txt_documents(path: Path, mode: TxtDocuments = "file") -> Iterator[str]:
    """Documents of a UTF-8 text file: the whole file, or each blank-line-separated block."""
    check_text_file(path)
    text = _read_text(path)
    if mode == "file":
        yield text.strip()
    elif mode == "paragraph":
        yield from (block.strip() for block in re.split(r"\n[ \t\r\f\v]*\n", text))
    else:
        raise InputError(f"CorpusSpec.txt_documents {mode!r}: choose 'file' or 'paragraph'")


def jsonl_documents(path: Path, text_field: str = "text") -> Iterator[str]:
    """The ``text_field`` string of each JSON object in a JSON-lines file (blank lines skipped)."""
    check_text_file(path)
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(_text_lines(path, handle), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise InputError(
                    f"corpus file {path} line {number}: invalid JSON ({error})"
                ) from None
            if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
                raise InputError(
                    f"corpus file {path} line {number}: no string field {text_field!r}"
                )
            yield record[text_field]


def parquet_documents(path: Path, text_field: str = "text") -> Iterator[str]:
    """The non-null strings of column ``text_field`` of a parquet file, read in batches."""
    parquet = pq.ParquetFile(path)
    if text_field not in parquet.schema_arrow.names:
        raise InputError(
            f"corpus file {path} has no column {text_field!r} "
            f"(columns: {parquet.schema_arrow.names})"
        )
    for batch in parquet.iter_batches(columns=[text_field], batch_size=1024):
        for value in batch.column(0).to_pylist():
            if value is not None:
                yield str(value)


def file_documents(
    paths: Iterable[str | os.PathLike[str]],
    text_field: str = "text",
    txt_mode: TxtDocuments = "file",
) -> Iterator[str]:
    """Documents of local ``.txt`` / ``.jsonl`` / ``.parquet`` files, file by file.

    All paths are checked (exist, known extension) before the first document is yielded.
    """
    for path in _expand_paths(paths):
        if path.suffix == ".txt":
            yield from txt_documents(path, txt_mode)
        elif path.suffix == ".jsonl":
            yield from jsonl_documents(path, text_field)
        else:
            yield from parquet_documents(path, text_field)


# --- Hugging Face -------------------------------------------------------------------------------


def huggingface_documents(
    name: str, *, config: str | None = None, split: str = "train", text_field: str = "text"
) -> Iterator[str]:
    """Stream ``text_field`` of a Hugging Face dataset (needs ``datasets`` and the network)."""
    try:
        datasets = importlib.import_module("datasets")
    except ImportError as error:
        raise InputError(
            f"corpus source 'huggingface' (dataset {name!r}) needs the package 'datasets': "
            "pip install datasets"
        ) from error
    stream = datasets.load_dataset(name, config, split=split, streaming=True)
    for number, row in enumerate(stream):
        text = row.get(text_field)
        if not isinstance(text, str):
            raise InputError(f"dataset {name!r} row {number} has no string field {text_field!r}")
        yield text


# --- the spec -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CorpusSpec:
    """Where the documents come from.

    ``source`` picks the kind; the fields of the other kinds are ignored. ``max_documents``
    caps the number of (non-blank) documents read, whatever the source.
    """

    source: SourceKind = "gensim"
    gensim_parts: tuple[str, ...] = ("wikipedia", "lee")
    paths: tuple[str, ...] = ()
    txt_documents: TxtDocuments = "file"
    dataset: str | None = None
    dataset_config: str | None = None
    dataset_split: str = "train"
    text_field: str = "text"
    max_documents: int | None = None

    def __post_init__(self) -> None:
        if self.source not in SOURCE_KINDS:
            raise InputError(f"corpus.source {self.source!r}: choose from {list(SOURCE_KINDS)}")
        if self.source == "gensim":
            unknown = [name for name in self.gensim_parts if name not in GENSIM_FILES]
            if unknown or not self.gensim_parts:
                raise InputError(
                    f"corpus.gensim_parts {list(self.gensim_parts)!r}: "
                    f"choose from {sorted(GENSIM_FILES)}"
                )
        if self.source == "files" and not self.paths:
            raise InputError("corpus.paths is empty: source 'files' needs at least one path")
        if self.source == "huggingface" and not self.dataset:
            raise InputError("corpus.dataset is not set: source 'huggingface' needs a name")
        if self.txt_documents not in ("file", "paragraph"):
            raise InputError(
                f"CorpusSpec.txt_documents {self.txt_documents!r}: choose 'file' or 'paragraph'"
            )
        if self.max_documents is not None and self.max_documents <= 0:
            raise InputError(f"corpus.max_documents must be positive, got {self.max_documents}")

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> CorpusSpec:
        """Build from the workflow's ``corpus:`` mapping; unknown keys are an InputError."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise InputError(f"corpus config has unknown keys {unknown}: known {sorted(known)}")
        values = dict(config)
        for key in ("gensim_parts", "paths"):
            if key in values:
                raw = values[key]
                values[key] = (raw,) if isinstance(raw, str) else tuple(str(v) for v in raw)
        return cls(**values)

    def describe(self) -> str:
        """A short name of the source for logs and error messages."""
        if self.source == "gensim":
            return "gensim:" + "+".join(self.gensim_parts)
        if self.source == "files":
            return "files:" + ",".join(self.paths)
        config = f"/{self.dataset_config}" if self.dataset_config else ""
        return f"huggingface:{self.dataset}{config}[{self.dataset_split}]"


def iter_documents(spec: CorpusSpec) -> Iterator[str]:
    """Yield the non-blank documents of ``spec``'s source, at most ``spec.max_documents``."""
    if spec.source == "gensim":
        documents: Iterator[str] = gensim_documents(spec.gensim_parts)
    elif spec.source == "files":
        documents = file_documents(spec.paths, spec.text_field, spec.txt_documents)
    else:
        assert spec.dataset is not None
        documents = huggingface_documents(
            spec.dataset,
            config=spec.dataset_config,
            split=spec.dataset_split,
            text_field=spec.text_field,
        )
    count = 0
    for document in documents:
        if document.strip():
            yield document
            count += 1
            if spec.max_documents is not None and count >= spec.max_documents:
                return


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

    Raises InputError naming ``source`` when there are no documents or fewer stream tokens than
    one context.
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

    if n_documents == 0:
        raise InputError(f"corpus {source} is empty: it yielded no documents")
    if n_contexts == 0:
        raise InputError(
            f"corpus {source} is empty: its {n_stream_tokens} tokens in {n_documents} documents "
            f"are fewer than one context of {context_length} tokens"
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

    Returns (and logs) the counts: documents, stream tokens, contexts per split.
    """
    source = spec.describe()
    contexts = tokenize_contexts(
        iter_documents(spec),
        tokenizer,
        context_length=context_length,
        bos_token_id=bos_token_id,
        max_contexts=max_contexts,
        source=source,
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
