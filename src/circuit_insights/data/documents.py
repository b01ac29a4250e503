"""Documents of the corpus from their source (:class:`CorpusSpec`, :func:`iter_documents`):
the gensim test data (Wikipedia excerpt, Lee news corpus), local .txt / .jsonl / .parquet files,
or a Hugging Face dataset. See :mod:`circuit_insights.data.corpus` for what is done with them."""

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

import pyarrow as pa
import pyarrow.parquet as pq

from circuit_insights.core.errors import InputError

if TYPE_CHECKING:
    pass
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


PATHS_KEY = "corpus.paths"
TEXT_FIELD_KEY = "corpus.text_field"


def _paths_error(message: str) -> InputError:
    """An :class:`InputError` that names ``corpus.paths``, the config key of the corpus files."""
    return InputError(f"config key {PATHS_KEY!r}: {message}")


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
            raise _paths_error(f"corpus file {path} does not exist")
        elif path.suffix not in FILE_EXTENSIONS:
            raise _paths_error(
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
    text (a NUL byte, or bytes that do not decode): a binary file under a ``.txt`` name.

    The message names the file, not the config key (the start-time check adds it)."""
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


def _check_text_head(path: Path) -> None:
    """:func:`check_text_file`, its message naming ``corpus.paths``."""
    try:
        check_text_file(path)
    except InputError as error:
        raise _paths_error(str(error)) from None


def first_decode_error(path: str | os.PathLike[str]) -> tuple[int, int, str] | None:
    """(byte offset, line from 1, reason) of the first bytes of ``path`` that are not UTF-8;
    None when the whole file decodes. Reads the file in blocks of 1 MiB."""
    pending = b""  # bytes of a character cut at the end of the last block
    offset = 0  # file offset of pending[0]
    line = 1
    with open(path, "rb") as handle:
        while True:
            block = handle.read(1 << 20)
            data = pending + block
            try:
                _, used = codecs.utf_8_decode(data, "strict", not block)
            except UnicodeDecodeError as error:
                return offset + error.start, line + data.count(b"\n", 0, error.start), error.reason
            line += data.count(b"\n", 0, used)
            offset += used
            pending = data[used:]
            if not block:
                return None


def _not_utf8(path: Path, error: UnicodeDecodeError) -> InputError:
    """The error for a text corpus file that stops being UTF-8 after the start-time check's
    first 64 KiB: names ``corpus.paths``, the file and the byte offset in the file."""
    found = first_decode_error(path)
    where = (
        f"at byte offset {found[0]} (line {found[1]}: {found[2]})"
        if found is not None
        else f"({error.reason})"
    )
    return _paths_error(
        f"corpus file {path} is not UTF-8 text {where}; convert it to UTF-8 "
        "(e.g. iconv -f latin1 -t utf-8) or leave it out"
    )


def _read_text(path: Path) -> str:
    """A UTF-8 text file's contents; :class:`InputError` naming the file when it is not text."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise _not_utf8(path, error) from None


def _text_lines(path: Path, handle: Iterable[str]) -> Iterator[str]:
    """The lines of an open UTF-8 text file; :class:`InputError` naming it when one is not text."""
    try:
        yield from handle
    except UnicodeDecodeError as error:
        raise _not_utf8(path, error) from None


def txt_documents(path: Path, mode: TxtDocuments = "file") -> Iterator[str]:
    """Documents of a UTF-8 text file: the whole file, or each blank-line-separated block."""
    _check_text_head(path)
    text = _read_text(path)
    if mode == "file":
        yield text.strip()
    elif mode == "paragraph":
        yield from (block.strip() for block in re.split(r"\n[ \t\r\f\v]*\n", text))
    else:
        raise InputError(f"CorpusSpec.txt_documents {mode!r}: choose 'file' or 'paragraph'")


def _no_text_field(path: Path, number: int, record: Any, text_field: str) -> InputError:
    """The error for JSON line ``number`` of ``path`` without a string ``text_field``."""
    if not isinstance(record, dict):
        what = f"is a JSON {type(record).__name__}, not an object with a field {text_field!r}"
    elif text_field not in record:
        shown = sorted(map(str, record))
        fields_ = ", ".join(shown[:10]) + (", ..." if len(shown) > 10 else "")
        what = f"has no field {text_field!r} (its fields: {fields_ or 'none'})"
    else:
        kind = type(record[text_field]).__name__
        what = f"has field {text_field!r}, but it holds a {kind}, not a string"
    return InputError(
        f"config key {TEXT_FIELD_KEY!r}: corpus file {path} (in {PATHS_KEY}) line {number} "
        f"{what}; set {TEXT_FIELD_KEY} to the field that holds the text"
    )


def jsonl_documents(path: Path, text_field: str = "text") -> Iterator[str]:
    """The ``text_field`` string of each JSON object in a JSON-lines file (blank lines skipped)."""
    _check_text_head(path)
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(_text_lines(path, handle), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise _paths_error(
                    f"corpus file {path} line {number} is not JSON ({error}); "
                    "a .jsonl file holds one JSON object per line"
                ) from None
            if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
                raise _no_text_field(path, number, record, text_field)
            yield record[text_field]


def _not_parquet(path: Path, error: Exception) -> InputError:
    return _paths_error(
        f"corpus file {path} is not a parquet file that can be read "
        f"({type(error).__name__}: {error})"
    )


def parquet_documents(path: Path, text_field: str = "text") -> Iterator[str]:
    """The non-null strings of column ``text_field`` of a parquet file, read in batches."""
    try:
        parquet = pq.ParquetFile(path)
        names = parquet.schema_arrow.names
    except (pa.ArrowException, OSError) as error:
        raise _not_parquet(path, error) from None
    if text_field not in names:
        raise InputError(
            f"config key {TEXT_FIELD_KEY!r}: corpus file {path} (in {PATHS_KEY}) has no column "
            f"{text_field!r} (its columns: {', '.join(names) or 'none'}); set "
            f"{TEXT_FIELD_KEY} to the column that holds the text"
        )
    batches = parquet.iter_batches(columns=[text_field], batch_size=1024)
    while True:
        try:
            batch = next(batches, None)
        except (pa.ArrowException, OSError) as error:
            raise _not_parquet(path, error) from None
        if batch is None:
            return
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

    @property
    def source_key(self) -> str:
        """The config key that says where the documents come from: ``corpus.paths``,
        ``corpus.gensim_parts`` or ``corpus.dataset`` (by ``source``)."""
        return {"gensim": "corpus.gensim_parts", "files": PATHS_KEY}.get(
            self.source, "corpus.dataset"
        )

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
