"""Tests of circuit_insights.data.corpus: sources, contexts, split, table; tiny offline tokenizers."""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from circuit_insights.core.errors import InputError
from circuit_insights.data.corpus import (
    build_token_table,
    load_contexts,
    prepare_corpus,
    split_contexts,
    tokenize_contexts,
)
from circuit_insights.data.documents import (
    TEXT_CHECK_BYTES,
    CorpusSpec,
    check_text_file,
    file_documents,
    first_decode_error,
    gensim_documents,
    huggingface_documents,
    iter_documents,
)
from circuit_insights.data.schemas import CORPUS_TOKENS_SCHEMA
from circuit_insights.pipeline.logs import configure_logging

WORDS = (
    "the cat sat on a mat and the dog ran to the park while birds sang in tall green trees "
    "near an old river where children played with red kites every sunny afternoon"
).split()
BOS, EOS = 1, 2


def _word_level(with_eos: bool) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over WORDS whose post-processor adds BOS if asked to."""
    backend = Tokenizer(models.WordLevel(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=["<pad>", "<bos>", "<eos>", "<unk>"])
    backend.train_from_iterator([" ".join(WORDS)], trainer)
    backend.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", BOS)]
    )
    specials = {"eos_token": "<eos>"} if with_eos else {}
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<bos>", unk_token="<unk>", **specials
    )


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    tok = _word_level(with_eos=True)
    assert tok.bos_token_id == BOS and tok.eos_token_id == EOS
    return tok


@pytest.fixture(scope="module")
def tokenizer_without_eos() -> PreTrainedTokenizerFast:
    tok = _word_level(with_eos=False)
    assert tok.eos_token_id is None
    return tok


def _documents(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(1, 40)))) for _ in range(n)]


def _stream(tok: PreTrainedTokenizerFast, docs: list[str], separator: int | None):
    """The joined token stream and the document of each token, built one document at a time."""
    tokens: list[int] = []
    owner: list[int] = []
    for index, doc in enumerate(docs):
        ids = tok.encode(doc, add_special_tokens=False)
        if index > 0 and separator is not None:
            ids = [separator, *ids]
        tokens += ids
        owner += [index] * len(ids)
    return np.array(tokens), np.array(owner)


# --- contexts -----------------------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [1, 3, 256])
def test_contexts_start_with_bos_and_reproduce_the_stream(tokenizer, batch_size):
    docs = _documents(50)
    out = tokenize_contexts(
        docs, tokenizer, context_length=16, bos_token_id=BOS, batch_size=batch_size
    )
    stream, owner = _stream(tokenizer, docs, separator=EOS)
    n = len(stream) // 15
    assert out.tokens.dtype == np.int32 and out.tokens.shape == (n, 16)
    assert (out.tokens[:, 0] == BOS).all()
    assert BOS not in out.tokens[:, 1:]  # the tokenizer's own BOS is never added
    np.testing.assert_array_equal(out.tokens[:, 1:].ravel(), stream[: n * 15])
    np.testing.assert_array_equal(out.document, owner[: n * 15 : 15])
    assert out.document.dtype == np.int32
    assert out.n_documents == 50 and out.n_stream_tokens == len(stream)
    assert (out.tokens == EOS).sum() == (stream[: n * 15] == EOS).sum() > 0


def test_contexts_without_bos_use_full_chunks(tokenizer):
    docs = _documents(30)
    out = tokenize_contexts(docs, tokenizer, context_length=8, bos_token_id=None)
    stream, _ = _stream(tokenizer, docs, separator=EOS)
    assert out.tokens.shape == (len(stream) // 8, 8)
    np.testing.assert_array_equal(out.tokens.ravel(), stream[: out.tokens.size])


def test_tokenizer_without_eos_joins_documents_directly(tokenizer_without_eos):
    docs = _documents(30)
    out = tokenize_contexts(docs, tokenizer_without_eos, context_length=10, bos_token_id=BOS)
    stream, _ = _stream(tokenizer_without_eos, docs, separator=None)
    np.testing.assert_array_equal(out.tokens[:, 1:].ravel(), stream[: out.n_contexts * 9])
    assert EOS not in out.tokens


def test_max_contexts_stops_reading_and_keeps_the_prefix(tokenizer):
    docs = _documents(200)
    consumed = []

    def counting() -> Iterator[str]:
        for doc in docs:
            consumed.append(doc)
            yield doc

    full = tokenize_contexts(docs, tokenizer, context_length=12, bos_token_id=BOS)
    capped = tokenize_contexts(
        counting(), tokenizer, context_length=12, bos_token_id=BOS, max_contexts=5, batch_size=4
    )
    assert capped.n_contexts == 5
    np.testing.assert_array_equal(capped.tokens, full.tokens[:5])
    np.testing.assert_array_equal(capped.document, full.document[:5])
    assert len(consumed) < len(docs)


def test_empty_and_too_short_corpora_are_input_errors(tokenizer):
    with pytest.raises(InputError, match="corpus my-source is empty: it yielded no documents"):
        tokenize_contexts([], tokenizer, context_length=8, bos_token_id=BOS, source="my-source")
    with pytest.raises(InputError, match="corpus tiny is empty: its 3 tokens in 1 documents"):
        tokenize_contexts(
            ["the cat sat"], tokenizer, context_length=8, bos_token_id=BOS, source="tiny"
        )
    # exactly one context: 7 tokens after BOS
    one = tokenize_contexts(
        ["the cat sat on a mat and"], tokenizer, context_length=8, bos_token_id=BOS
    )
    assert one.n_contexts == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"context_length": 1, "bos_token_id": BOS}, "no room for text after BOS"),
        ({"context_length": 0, "bos_token_id": None}, "no room for text"),
        ({"context_length": 8, "bos_token_id": -1}, "bos_token_id"),
        ({"context_length": 8, "bos_token_id": BOS, "max_contexts": 0}, "max_contexts"),
    ],
)
def test_bad_context_arguments(tokenizer, kwargs, message):
    with pytest.raises(InputError, match=message):
        tokenize_contexts(_documents(5), tokenizer, **kwargs)


# --- split --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "fraction"), [(2, 0.5), (10, 0.01), (10, 0.99), (1000, 0.1)])
def test_split_is_disjoint_covering_and_seeded(n, fraction):
    cache, evals = split_contexts(n, fraction, seed=7)
    assert len(cache) > 0 and len(evals) > 0
    assert not set(cache) & set(evals)
    np.testing.assert_array_equal(np.sort(np.concatenate([cache, evals])), np.arange(n))
    again = split_contexts(n, fraction, seed=7)
    np.testing.assert_array_equal(again[0], cache)
    np.testing.assert_array_equal(again[1], evals)
    if n == 1000:
        assert len(evals) == 100
        assert not np.array_equal(split_contexts(n, fraction, seed=8)[1], evals)


@pytest.mark.parametrize(("n", "fraction"), [(1, 0.5), (0, 0.5), (10, 0.0), (10, 1.0)])
def test_split_that_leaves_a_side_empty_is_an_input_error(n, fraction):
    with pytest.raises(InputError):
        split_contexts(n, fraction, seed=0)


def test_build_token_table_rejects_a_split_that_does_not_partition():
    tokens = np.zeros((4, 3), dtype=np.int32)
    with pytest.raises(InputError, match="partition"):
        build_token_table(tokens, np.zeros(4, dtype=np.int32), np.array([0, 1]), np.array([1]))


# --- the artifact -------------------------------------------------------------------------------


def _write_jsonl(path: Path, docs: list[str], field: str = "text") -> Path:
    path.write_text("".join(json.dumps({field: doc, "id": i}) + "\n" for i, doc in enumerate(docs)))
    return path


def test_prepare_corpus_writes_a_deterministic_table_that_loads_back(tokenizer, tmp_path):
    docs = _documents(80)
    spec = CorpusSpec(source="files", paths=(str(_write_jsonl(tmp_path / "d.jsonl", docs)),))
    kwargs = dict(bos_token_id=BOS, context_length=10, max_contexts=None, eval_fraction=0.25)
    summary = prepare_corpus(spec, tokenizer, seed=3, out_path=tmp_path / "a.parquet", **kwargs)
    prepare_corpus(spec, tokenizer, seed=3, out_path=tmp_path / "b.parquet", **kwargs)

    table = pq.read_table(tmp_path / "a.parquet")
    assert table.schema.equals(CORPUS_TOKENS_SCHEMA)
    assert table.equals(pq.read_table(tmp_path / "b.parquet"))
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]

    expected = tokenize_contexts(docs, tokenizer, context_length=10, bos_token_id=BOS)
    ids, tokens = load_contexts(tmp_path / "a.parquet")
    np.testing.assert_array_equal(ids, np.arange(expected.n_contexts))
    np.testing.assert_array_equal(tokens, expected.tokens)
    np.testing.assert_array_equal(table.column("document").to_numpy(), expected.document)

    cache_ids, cache_tokens = load_contexts(tmp_path / "a.parquet", "cache")
    eval_ids, eval_tokens = load_contexts(tmp_path / "a.parquet", "eval")
    assert cache_tokens.shape[1] == eval_tokens.shape[1] == 10
    np.testing.assert_array_equal(np.sort(np.concatenate([cache_ids, eval_ids])), ids)
    np.testing.assert_array_equal(eval_tokens, expected.tokens[eval_ids])
    cache_idx, eval_idx = split_contexts(expected.n_contexts, 0.25, seed=3)
    np.testing.assert_array_equal(eval_ids, eval_idx)
    assert summary["n_contexts"] == expected.n_contexts
    assert summary["n_cache"] + summary["n_eval"] == expected.n_contexts
    assert summary["n_documents"] == 80 and summary["source"].startswith("files:")


def test_prepare_corpus_on_an_empty_source_names_it(tokenizer, tmp_path):
    (tmp_path / "blank.txt").write_text("  \n\n \n")
    spec = CorpusSpec(source="files", paths=(str(tmp_path / "blank.txt"),))
    with pytest.raises(InputError) as caught:
        prepare_corpus(spec, tokenizer, BOS, 8, None, 0.1, 0, tmp_path / "out.parquet")
    message = str(caught.value)
    assert message.startswith("config key 'corpus.paths': ")
    assert str(tmp_path / "blank.txt") in message
    assert "no document that is not blank (0 tokens)" in message
    assert "corpus.context_length 8" in message
    assert not (tmp_path / "out.parquet").exists()


# --- problems found only while the corpus job reads the corpus (issue 26) ------------------------


def _prepare(tokenizer, spec: CorpusSpec, out: Path, **kwargs) -> dict:
    """prepare_corpus with the workflow's defaults, overridden by ``kwargs``."""
    values = dict(context_length=64, max_contexts=3000, eval_fraction=0.1, seed=0)
    values.update(kwargs)
    return prepare_corpus(spec, tokenizer, BOS, out_path=out, **values)


def test_a_corpus_too_short_for_one_context_names_paths_tokens_and_context_length(
    tokenizer, tmp_path
):
    five = tmp_path / "five.txt"
    five.write_text("the cat sat on a\n")  # 5 tokens
    spec = CorpusSpec(source="files", paths=(str(five),))
    with pytest.raises(InputError) as caught:
        _prepare(tokenizer, spec, tmp_path / "out.parquet")
    message = str(caught.value)
    assert message == (
        f"config key 'corpus.paths': the corpus (corpus.paths {five}) holds 5 tokens in 1 "
        "document, fewer than the 63 (BOS aside) that one context of corpus.context_length 64 "
        "needs; add text, or lower corpus.context_length"
    )
    assert not (tmp_path / "out.parquet").exists()


def test_a_context_length_longer_than_the_corpus_names_both_keys(tokenizer, tmp_path):
    path = _write_jsonl(tmp_path / "d.jsonl", _documents(20))
    n_tokens = tokenize_contexts(
        _documents(20), tokenizer, context_length=2, bos_token_id=BOS
    ).n_stream_tokens
    spec = CorpusSpec(source="files", paths=(str(tmp_path),), max_documents=20)
    with pytest.raises(InputError) as caught:
        _prepare(tokenizer, spec, tmp_path / "out.parquet", context_length=100_000)
    message = str(caught.value)
    assert message.startswith("config key 'corpus.paths': ")
    assert f"corpus.paths {tmp_path}, capped at corpus.max_documents 20" in message
    assert f"holds {n_tokens} tokens in 20 documents" in message
    assert "corpus.context_length 100000" in message and "is empty" not in message
    assert path.exists()


def test_a_too_short_gensim_corpus_names_gensim_parts(tokenizer, tmp_path):
    pytest.importorskip("gensim")
    spec = CorpusSpec(gensim_parts=("lee",), max_documents=1)
    with pytest.raises(InputError) as caught:
        _prepare(tokenizer, spec, tmp_path / "out.parquet", context_length=100_000)
    message = str(caught.value)
    assert message.startswith("config key 'corpus.gensim_parts': the corpus (corpus.source gensim")
    assert "corpus.max_documents 1" in message and "corpus.context_length 100000" in message


def test_one_context_and_an_eval_fraction_names_eval_fraction(tokenizer, tmp_path):
    path = tmp_path / "one.txt"
    path.write_text("the cat sat on a mat and the dog\n")  # 9 tokens: one context of 8
    spec = CorpusSpec(source="files", paths=(str(path),))
    with pytest.raises(InputError) as caught:
        _prepare(tokenizer, spec, tmp_path / "out.parquet", context_length=8, eval_fraction=0.5)
    message = str(caught.value)
    assert message.startswith("config key 'corpus.eval_fraction': 0.5 of 1 context holds out 0")
    assert f"corpus.paths {path}" in message and "corpus.context_length 8" in message


def test_fewer_contexts_than_max_contexts_is_a_cap_not_an_error(tokenizer, tmp_path):
    spec = CorpusSpec(
        source="files", paths=(str(_write_jsonl(tmp_path / "d.jsonl", ["the cat"] * 20)),)
    )
    summary = _prepare(tokenizer, spec, tmp_path / "out.parquet", context_length=8)
    assert 2 <= summary["n_contexts"] < 3000 and summary["n_eval"] >= 1


def test_a_decode_error_past_the_start_check_names_the_byte_offset(tokenizer, tmp_path):
    head = b"the cat sat on a mat " * 4000  # 84,000 bytes: past the 64 KiB the preflight reads
    assert len(head) > TEXT_CHECK_BYTES
    text = tmp_path / "late.txt"
    text.write_bytes(head + b"\nthe caf\xe9 sat\n")
    offset = len(head) + len(b"\nthe caf")
    check_text_file(text)  # the start-time check passes
    with pytest.raises(InputError) as caught:
        list(file_documents([text]))
    assert str(caught.value).startswith(
        f"config key 'corpus.paths': corpus file {text} is not UTF-8 text at byte offset "
        f"{offset} (line 2: invalid continuation byte)"
    )

    lines = [json.dumps({"text": "the cat sat on a mat"}) + "\n" for _ in range(3000)]
    start = "".join(lines).encode()
    records = tmp_path / "late.jsonl"
    records.write_bytes(start + b'{"text": "caf\xe9"}\n')
    check_text_file(records)
    spec = CorpusSpec(source="files", paths=(str(records),))
    with pytest.raises(InputError) as caught:
        _prepare(tokenizer, spec, tmp_path / "out.parquet")
    offset = len(start) + len(b'{"text": "caf')
    assert str(caught.value).startswith(
        f"config key 'corpus.paths': corpus file {records} is not UTF-8 text at byte offset "
        f"{offset} (line 3001: "
    )


def test_first_decode_error_across_blocks(tmp_path):
    path = tmp_path / "t.txt"
    # a two-byte character cut by the 1 MiB block boundary is fine; the bad byte after it is not
    body = b"a" * ((1 << 20) - 1) + "é".encode() + b"\n\n" + b"b\xff"
    path.write_bytes(body)
    assert first_decode_error(path) == (len(body) - 1, 3, "invalid start byte")
    path.write_bytes(b"a" * ((1 << 20) - 1) + "é".encode())
    assert first_decode_error(path) is None
    path.write_bytes(b"abc\xc3")  # a character cut by the end of the file
    assert first_decode_error(path) == (3, 1, "unexpected end of data")


def test_jsonl_lines_without_the_text_field_or_not_json_name_key_file_and_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "ok"}\n\n{"body": "x", "id": 1}\n')
    with pytest.raises(InputError) as caught:
        list(file_documents([path]))
    assert str(caught.value) == (
        f"config key 'corpus.text_field': corpus file {path} (in corpus.paths) line 3 has no "
        "field 'text' (its fields: body, id); set corpus.text_field to the field that holds "
        "the text"
    )
    path.write_text('{"text": 3}\n')
    with pytest.raises(InputError, match=r"line 1 has field 'text', but it holds a int"):
        list(file_documents([path]))
    path.write_text('["text"]\n')
    with pytest.raises(InputError, match=r"line 1 is a JSON list, not an object"):
        list(file_documents([path]))
    path.write_text('{"text": "ok"}\n{not json\n')
    with pytest.raises(InputError) as caught:
        list(file_documents([path]))
    assert str(caught.value).startswith(
        f"config key 'corpus.paths': corpus file {path} line 2 is not JSON (Expecting"
    )


@pytest.mark.parametrize(
    "content", [b"text\nhello\n", b"PAR1" + b"x" * 100 + b"PAR1"], ids=["csv", "par1-garbage"]
)
def test_a_parquet_name_on_another_file_names_paths_and_the_file(tokenizer, tmp_path, content):
    path = tmp_path / "d.parquet"
    path.write_bytes(content)
    spec = CorpusSpec(source="files", paths=(str(path),))
    with pytest.raises(InputError) as caught:
        _prepare(tokenizer, spec, tmp_path / "out.parquet")
    assert str(caught.value).startswith(
        f"config key 'corpus.paths': corpus file {path} is not a parquet file that can be read "
        "(ArrowInvalid: "
    )


def test_a_parquet_without_the_text_column_names_paths_text_field_and_the_file(tmp_path):
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"body": ["x"], "id": [1]}), path)
    with pytest.raises(InputError) as caught:
        list(file_documents([path]))
    assert str(caught.value) == (
        f"config key 'corpus.text_field': corpus file {path} (in corpus.paths) has no column "
        "'text' (its columns: body, id); set corpus.text_field to the column that holds the text"
    )


def test_an_uncaught_input_error_is_logged_as_one_line_without_traceback(tmp_path):
    root = logging.getLogger()
    saved = (sys.excepthook, root.handlers[:], root.level)
    log_file = tmp_path / "logs" / "corpus.log"
    try:
        configure_logging(log_file, watch_snakemake=False)
        for error in (InputError("config key 'corpus.paths': corpus file a.txt"), KeyError("k")):
            try:
                raise error
            except Exception as caught:  # handed to the hook as Python would hand it
                sys.excepthook(type(caught), caught, caught.__traceback__)
        for handler in root.handlers:
            handler.flush()
    finally:
        for handler in root.handlers:
            if handler not in saved[1]:
                handler.close()
        sys.excepthook = saved[0]
        root.handlers[:] = saved[1]
        root.setLevel(saved[2])
    lines = log_file.read_text().splitlines()
    assert lines[0].endswith(
        "ERROR circuit_insights: job failed: config key 'corpus.paths': corpus file a.txt"
    )
    assert lines[1].endswith("ERROR circuit_insights: job failed: 'k'")
    assert lines[2] == "Traceback (most recent call last):"  # other errors keep their traceback
    assert "Traceback" not in "\n".join(lines[:2])


def test_load_contexts_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_contexts(tmp_path / "missing.parquet", "cache")
    with pytest.raises(InputError, match="split 'train'"):
        load_contexts(tmp_path / "missing.parquet", "train")
    pq.write_table(pa.table({"context": [0]}), tmp_path / "other.parquet")
    with pytest.raises(InputError, match="lacks columns"):
        load_contexts(tmp_path / "other.parquet")


# --- local files --------------------------------------------------------------------------------


def test_each_local_format(tmp_path):
    (tmp_path / "one.txt").write_text("First paragraph here.\n\n  \nSecond one\nstill second.\n")
    _write_jsonl(tmp_path / "two.jsonl", ["json doc a", "json doc b"], field="body")
    pq.write_table(pa.table({"body": ["pq doc a", None, "pq doc b"]}), tmp_path / "three.parquet")

    assert list(file_documents([tmp_path / "one.txt"])) == [
        "First paragraph here.\n\n  \nSecond one\nstill second."
    ]
    assert list(file_documents([tmp_path / "one.txt"], txt_mode="paragraph")) == [
        "First paragraph here.",
        "Second one\nstill second.",
    ]
    assert list(file_documents([tmp_path / "two.jsonl"], text_field="body")) == [
        "json doc a",
        "json doc b",
    ]
    assert list(file_documents([tmp_path / "three.parquet"], text_field="body")) == [
        "pq doc a",
        "pq doc b",
    ]
    (tmp_path / "notes.md").write_text("ignored in a directory")
    spec = CorpusSpec(source="files", paths=(str(tmp_path),), text_field="body", max_documents=4)
    # a directory: its supported files in sorted order (one.txt, three.parquet, two.jsonl)
    assert list(iter_documents(spec)) == [
        "First paragraph here.\n\n  \nSecond one\nstill second.",
        "pq doc a",
        "pq doc b",
        "json doc a",
    ]


def test_local_file_errors(tmp_path):
    with pytest.raises(InputError, match=re.escape(str(tmp_path / "nope.txt"))):
        list(file_documents([tmp_path / "nope.txt"]))
    (tmp_path / "data.csv").write_text("text\nhello\n")
    with pytest.raises(InputError, match=r"data\.csv has unknown extension '\.csv'"):
        list(file_documents([tmp_path / "data.csv"]))
    _write_jsonl(tmp_path / "d.jsonl", ["a"], field="body")
    with pytest.raises(
        InputError, match=r"d\.jsonl \(in corpus.paths\) line 1 has no field 'text'"
    ):
        list(file_documents([tmp_path / "d.jsonl"]))
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{not json\n')
    with pytest.raises(InputError, match=r"bad\.jsonl line 2 is not JSON"):
        list(file_documents([tmp_path / "bad.jsonl"]))
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "p.parquet")
    with pytest.raises(InputError, match=r"p\.parquet \(in corpus.paths\) has no column 'text'"):
        list(file_documents([tmp_path / "p.parquet"]))


# --- spec and optional packages -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"source": "web"}, "corpus.source 'web'"),
        ({"source": "files"}, "corpus.paths is empty"),
        ({"source": "huggingface"}, "corpus.dataset is not set"),
        ({"gensim_parts": ["wikipedia", "bible"]}, "corpus.gensim_parts"),
        ({"max_documents": 0}, "corpus.max_documents"),
        ({"txt_documents": "line"}, "CorpusSpec.txt_documents"),
        ({"path": "a.txt"}, r"unknown keys \['path'\]"),
    ],
)
def test_bad_spec_is_an_input_error(config, message):
    with pytest.raises(InputError, match=message):
        CorpusSpec.from_config(config)


def test_spec_from_config_and_describe():
    spec = CorpusSpec.from_config({"source": "files", "paths": "a.txt", "max_documents": 3})
    assert spec.paths == ("a.txt",) and spec.describe() == "files:a.txt"
    assert CorpusSpec().describe() == "gensim:wikipedia+lee"
    assert (spec.source_key, CorpusSpec().source_key) == ("corpus.paths", "corpus.gensim_parts")
    hf = CorpusSpec(source="huggingface", dataset="org/name", dataset_config="en")
    assert hf.describe() == "huggingface:org/name/en[train]"
    assert hf.source_key == "corpus.dataset"


def test_missing_datasets_package_is_an_input_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(InputError, match="needs the package 'datasets': pip install datasets"):
        list(huggingface_documents("org/name"))


def test_missing_gensim_package_is_an_input_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "gensim", None)
    with pytest.raises(InputError, match="needs the package 'gensim'"):
        list(gensim_documents(("lee",)))


# --- real English text from gensim ---------------------------------------------------------------

COMMON = {"the", "of", "and", "in", "to", "a", "is", "was", "for", "that", "as", "by", "with"}


def _looks_like_english_prose(text: str) -> bool:
    words = re.findall(r"[A-Za-z]+", text.lower())
    return len(words) >= 20 and sum(w in COMMON for w in words) / len(words) > 0.1


def test_gensim_wikipedia_and_lee_are_clean_english():
    pytest.importorskip("gensim")
    wikipedia = list(gensim_documents(("wikipedia",)))
    lee = list(gensim_documents(("lee",)))
    assert len(wikipedia) == 106
    assert len(lee) == 300
    assert sum(len(doc.split()) for doc in wikipedia) > 400_000
    assert sum(len(doc.split()) for doc in lee) > 50_000
    for doc in wikipedia:
        for markup in ("[[", "]]", "{{", "}}", "|}", "{|", "''", "==", "<ref", "&nbsp;"):
            assert markup not in doc, (markup, doc[:80])
    assert sum(_looks_like_english_prose(doc) for doc in wikipedia) >= 100
    assert all(_looks_like_english_prose(doc) for doc in lee)
    assert wikipedia[0].startswith("Anarchism is a political philosophy")
    spec = CorpusSpec(max_documents=110)  # both sources, in order, capped
    documents = list(iter_documents(spec))
    assert documents[:106] == wikipedia and documents[106:] == lee[:4]
