"""Rule corpus: documents -> contexts with BOS -> caching / evaluation split."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from circuit_insights.models.loading import load_tokenizer_and_bos
from circuit_insights.pipeline.locations import model_location

log = logging.getLogger(__name__)


def run_corpus(
    *,
    model_config: Mapping[str, Any],
    corpus_config: Mapping[str, Any],
    model_files: Sequence[str] | str,
    out_path: str,
) -> dict[str, Any]:
    """Rule corpus: documents -> contexts with BOS -> cache / eval split parquet."""
    from circuit_insights.data.corpus import prepare_corpus
    from circuit_insights.data.documents import CorpusSpec

    tokenizer, bos = load_tokenizer_and_bos(model_config, model_location(model_config, model_files))
    spec = CorpusSpec(
        source=corpus_config["source"],
        gensim_parts=tuple(corpus_config["gensim_parts"]),
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
