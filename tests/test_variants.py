"""The variant table (circuit_insights.explain.variants): the only place naming the variants, and
the source of every list of variant names."""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from circuit_insights.explain.config import ExplainConfig
from circuit_insights.explain.facts import FeatureInputs, MarkedContext, WeightLensFacts
from circuit_insights.explain.kinds import (
    CLUSTERS,
    TOP_CONTEXTS,
    WEIGHTLENS_TOKENS,
    ClusterPrompt,
    ExecutableVariant,
    FeaturePrompt,
    LLMFreeVariant,
    VariantTable,
)
from circuit_insights.explain.run import explain_shard
from circuit_insights.explain.variants import (
    CLUSTER_VARIANTS,
    EXECUTABLE_VARIANTS,
    LLM_VARIANTS,
    RULE_VARIANTS,
    TABLE,
    VARIANTS,
)

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "circuit_insights"
#: Where the variants are named: the table.
TABLE_FILES = {"explain/variants.py"}
#: The variants' own prompt templates (named after them) are not scanned.
TEMPLATE_DIR = "explain/templates/"
#: Variant names that also name something else: ``weightlens`` is the WeightLens stage, its
#: config block, its results folder and table. Such a name counts as naming the variant only
#: where it is compared (``== "weightlens"``, ``in ("weightlens", ...)``), listed with another
#: variant, or given to something named for a variant (``variant=...``, ``LLM_FREE_VARIANT = ...``,
#: ``{"variant": ...}``, ``frame["variant"].isin([...])``).
SHARED_NAMES = {"weightlens"}


def _parents(tree: ast.AST) -> dict[ast.AST, ast.AST]:
    return {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}


def _names_a_shared_variant(
    node: ast.Constant, parents: dict[ast.AST, ast.AST], source: str
) -> bool:
    """Whether a constant of a shared name is used as a variant name (see SHARED_NAMES)."""

    def speaks_of_variants(part: ast.AST | str | None) -> bool:
        text = part if isinstance(part, str | None) else ast.get_source_segment(source, part)
        return bool(text) and "variant" in str(text).lower()

    child: ast.AST = node
    holder = parents.get(node)
    while isinstance(holder, ast.Tuple | ast.List | ast.Set | ast.Starred):
        others = {e.value for e in holder.elts if isinstance(e, ast.Constant)} - {node.value}
        if others & set(VARIANTS):
            return True
        child, holder = holder, parents.get(holder)
    if isinstance(holder, ast.Compare | ast.MatchValue):
        return True
    if isinstance(holder, ast.Assign):
        return any(speaks_of_variants(target) for target in holder.targets)
    if isinstance(holder, ast.AnnAssign):
        return speaks_of_variants(holder.target)
    if isinstance(holder, ast.keyword):
        return speaks_of_variants(holder.arg)
    if isinstance(holder, ast.Call):
        return speaks_of_variants(holder.func)
    if isinstance(holder, ast.Dict) and child in holder.values:
        return speaks_of_variants(holder.keys[holder.values.index(child)])
    return False


def variant_names_in(path: Path) -> list[tuple[int, str]]:
    """(line, name) of every string literal in ``path`` that names a variant."""
    source = path.read_text(encoding="utf-8")
    if path.suffix != ".py":
        unique = [v for v in VARIANTS if v not in SHARED_NAMES]
        pattern = re.compile(r"[\"'](" + "|".join(map(re.escape, unique)) + r")[\"']")
        return [
            (source.count("\n", 0, m.start()) + 1, m.group(1)) for m in pattern.finditer(source)
        ]
    tree = ast.parse(source)
    parents = _parents(tree)
    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Constant) and node.value in VARIANTS):
            continue
        if node.value in SHARED_NAMES and not _names_a_shared_variant(node, parents, source):
            continue
        found.append((node.lineno, str(node.value)))
    return sorted(found)


def test_the_table_is_the_only_place_naming_the_variants():
    offenders = []
    for path in sorted(PACKAGE.rglob("*")):
        relative = path.relative_to(PACKAGE).as_posix()
        if not path.is_file() or path.suffix not in {".py", ".html", ".yaml", ".j2", ".txt"}:
            continue
        if relative in TABLE_FILES or relative.startswith(TEMPLATE_DIR):
            continue
        offenders += [f"{relative}:{line}: {name!r}" for line, name in variant_names_in(path)]
    assert not offenders, "variant names outside the variant table:\n" + "\n".join(offenders)


def test_the_scan_finds_a_dispatch_on_a_variant_name(tmp_path):
    code = tmp_path / "dispatch.py"
    code.write_text(
        'STAGE = "weightlens"\n'
        'if variant == "weightlens":\n    pass\n'
        'if name in ("cl_full", "other"):\n    pass\n'
        'SHOWN = ("weightlens", "maxact")\n'
        'LLM_FREE_VARIANT = "weightlens"\n'
        'rows = frame[frame["variant"].isin(["weightlens"])]\n'
        'row = {"variant": "weightlens", "stage": "weightlens"}\n'
        'config["weightlens"] = describe(variant="weightlens")\n'
    )
    assert variant_names_in(code) == [
        (2, "weightlens"),
        (4, "cl_full"),
        (6, "maxact"),
        (6, "weightlens"),
        (7, "weightlens"),
        (8, "weightlens"),
        (9, "weightlens"),
        (10, "weightlens"),
    ]


def test_every_list_of_variants_is_derived_from_the_table():
    assert VARIANTS == tuple(v.name for v in TABLE)
    assert LLM_VARIANTS == tuple(v.name for v in TABLE if v.needs_llm)
    assert RULE_VARIANTS == tuple(v.name for v in TABLE if not v.needs_llm)
    assert CLUSTER_VARIANTS == tuple(v.name for v in TABLE if v.per_cluster)
    assert set(EXECUTABLE_VARIANTS) == {v.name for v in TABLE if v.executable}
    assert EXECUTABLE_VARIANTS == tuple(v.name for v in TABLE.executables())
    assert [v.rule_rank for v in TABLE.executables()] == sorted(
        v.rule_rank for v in TABLE.executables()
    )
    for variant in TABLE:
        assert variant.reads, f"{variant.name} says nothing about what it reads"
        assert all(needed.what for needed in variant.reads)
        assert isinstance(variant, LLMFreeVariant) != variant.needs_llm


@dataclass(frozen=True)
class Counted(LLMFreeVariant):
    """A new LLM-free variant: how many top contexts the feature has."""

    def description(self, inputs: FeatureInputs, config: ExplainConfig) -> str:
        return f"{len(inputs.top_contexts)} top contexts"


def test_adding_a_variant_object_is_all_it_takes():
    new_llm = FeaturePrompt(name="maxact_wl", reads=(TOP_CONTEXTS, WEIGHTLENS_TOKENS))
    new_cluster = ClusterPrompt(name="cl_tiny", reads=(CLUSTERS,))
    new_rule = Counted(name="counted", reads=(TOP_CONTEXTS,))
    table = VariantTable((*TABLE.variants, new_llm, new_cluster, new_rule))
    assert table.names == (*VARIANTS, "maxact_wl", "cl_tiny", "counted")
    assert table.llm_names == (*LLM_VARIANTS, "maxact_wl", "cl_tiny")
    assert table.cluster_names == (*CLUSTER_VARIANTS, "cl_tiny")
    assert table.llm_free_names == (*RULE_VARIANTS, "counted")
    assert table.executable_names == EXECUTABLE_VARIANTS
    assert table["counted"] is new_rule and "counted" in table and "counted" not in TABLE
    # What it reads says why a feature cannot be described.
    bare = FeatureInputs(layer=0, feature=1, weightlens=WeightLensFacts())
    assert new_llm.missing(bare, ExplainConfig()) == "no top contexts"
    with pytest.raises(ValueError, match="more than once"):
        VariantTable((*TABLE.variants, new_rule, new_rule))
    with pytest.raises(ValueError, match="rule_rank"):
        VariantTable((*TABLE.variants, replace(TABLE[EXECUTABLE_VARIANTS[0]], name="again")))


def test_a_new_variant_runs_through_explain_shard(monkeypatch):
    """The run module asks the table only: a variant added to it is explained like the others."""
    from circuit_insights.explain import run

    new_rule = Counted(name="counted", reads=(TOP_CONTEXTS,))
    monkeypatch.setattr(run, "TABLE", VariantTable((*TABLE.variants, new_rule)))
    shown = (MarkedContext("The capital is", " Paris"),)
    inputs = {
        1: FeatureInputs(layer=0, feature=1),
        2: FeatureInputs(layer=0, feature=2, top_contexts=shown),
    }
    frame = explain_shard(None, inputs, ["counted"])
    assert frame[["feature", "variant", "step", "description", "error"]].values.tolist() == [
        [1, "counted", "missing_input", None, "no top contexts"],
        [2, "counted", "rule", "1 top contexts", None],
    ]


def test_executable_variants_are_executable_objects():
    for name in EXECUTABLE_VARIANTS:
        assert isinstance(TABLE[name], ExecutableVariant)


def test_the_config_schema_lists_the_variants_of_the_table():
    """While ``workflow/schemas/config.schema.yaml`` enumerates the variants a config may name
    (``explain.variants``, ``evaluate.variants``, ``rules.variants``), its lists are the table's."""
    import yaml

    schema_path = PACKAGE.parents[1] / "workflow" / "schemas" / "config.schema.yaml"
    properties = yaml.safe_load(schema_path.read_text(encoding="utf-8"))["properties"]
    for block, expected in (
        ("explain", VARIANTS),
        ("evaluate", VARIANTS),
        ("rules", EXECUTABLE_VARIANTS),
    ):
        enum = properties[block]["properties"]["variants"]["items"].get("enum")
        if enum is not None:
            assert tuple(enum) == expected, f"{block}.variants"
