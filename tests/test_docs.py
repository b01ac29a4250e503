"""The project's docs match its code: config keys they name exist, and they stand alone.

- Every config key a doc names in backticks (``explain.prompt.n_maxact``,
  ``models.<model>.weightlens.t_tok``) exists in ``workflow/schemas/config.schema.yaml``. A
  backticked dotted name counts as a config key when its first part is a top-level key of the
  schema; library names are written with their package (``circuit_insights.explain.…``) or as a
  call (``explain.sample_table()``), so they are not mistaken for keys.
- No doc names a file outside the project: no ``METHOD.md``, no ``../shared``, no absolute
  ``/work/`` path, and every relative markdown link resolves to a file inside the repository.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
DOCS = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]

#: A backticked dotted name: ``a.b``, ``a.b.c``, ``models.<m>.layers``; not followed by ``(``.
_DOTTED = re.compile(r"`([A-Za-z_][A-Za-z0-9_]*(?:\.(?:<[^`>]+>|\*|[A-Za-z_][A-Za-z0-9_]*))+)`")
#: A markdown link ``[text](target)``.
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
#: Last parts that make a dotted name a file name (``report.md``, ``weightlens.parquet``).
_FILE_EXTENSIONS = {
    "md",
    "json",
    "yaml",
    "yml",
    "parquet",
    "py",
    "html",
    "png",
    "txt",
    "log",
    "tsv",
}
_OUTSIDE = (re.compile(r"METHOD\.md"), re.compile(r"\.\./shared"), re.compile(r"/work/"))


def _schema() -> dict[str, Any]:
    return yaml.safe_load(SCHEMA.read_text(encoding="utf-8"))


def schema_has(schema: dict[str, Any], key: str) -> bool:
    """Whether the dotted ``key`` is a path of the schema; ``<name>`` / ``*`` parts match the
    entries of an object whose ``additionalProperties`` is a schema (``models.<model>``)."""
    node: dict[str, Any] = schema
    for part in key.split("."):
        properties = node.get("properties", {})
        extra = node.get("additionalProperties")
        if part.startswith("<") or part == "*":
            if not isinstance(extra, dict):
                return False
            node = extra
        elif part in properties:
            node = properties[part]
        elif isinstance(extra, dict) and "properties" in extra:
            return False  # a named entry of a free mapping must be written as <name>
        else:
            return False
    return True


def config_keys_named(text: str, top_level: set[str]) -> list[str]:
    """The dotted names in backticks of ``text`` whose first part is a top-level config key."""
    keys = []
    for match in _DOTTED.finditer(text):
        name = match.group(1)
        if text[match.end() : match.end() + 1] == "(":
            continue
        parts = name.split(".")
        if parts[0] in top_level and parts[-1] not in _FILE_EXTENSIONS:
            keys.append(name)
    return keys


def test_schema_lookup_follows_nesting_and_free_mappings():
    schema = _schema()
    assert schema_has(schema, "explain.prompt.n_maxact")
    assert schema_has(schema, "models.<model>.weightlens.t_tok")
    assert schema_has(schema, "corpus.gensim_parts")
    assert not schema_has(schema, "corpus.gensim_sources")
    assert not schema_has(schema, "explain.prompt.no_such_key")
    text = "set `corpus.paths` and `x.y`, `explain.sample_table()`, `report.md`"
    assert config_keys_named(text, {"corpus", "explain", "report"}) == ["corpus.paths"]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_config_key_named_in_the_docs_exists(doc: Path):
    schema = _schema()
    top_level = set(schema["properties"])
    unknown = [
        key
        for key in config_keys_named(doc.read_text(encoding="utf-8"), top_level)
        if not schema_has(schema, key)
    ]
    assert not unknown, f"{doc.name} names config keys the schema does not have: {unknown}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_no_doc_names_a_file_outside_the_project(doc: Path):
    text = doc.read_text(encoding="utf-8")
    for pattern in _OUTSIDE:
        lines = [i + 1 for i, line in enumerate(text.splitlines()) if pattern.search(line)]
        assert not lines, f"{doc.name} lines {lines} name {pattern.pattern!r} (not in the project)"
    for target in _LINK.findall(text):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue  # a web address or an anchor of the same page
        path = (doc.parent / target.split("#")[0]).resolve()
        assert path.is_relative_to(ROOT), f"{doc.name} links outside the project: {target}"
        assert path.exists(), f"{doc.name} links to a missing file: {target}"
