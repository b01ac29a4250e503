"""README figures written from a finished run's outputs (``make readme-figures``; command line:
:mod:`tools.readme_figures`).

README.md holds generated blocks between marker comments::

    <!-- generated:NAME -->
    ...
    <!-- /generated:NAME -->

:func:`update_readme` replaces what lies between the markers of each block given and leaves every
other line alone. The blocks (:func:`readme_blocks`), each opening with a line naming the files it
was made from and the run's date (the newest modification time of those files):

- ``run-time``: job time by rule, from Snakemake's benchmark files
  ``{results}/benchmarks/**.tsv`` (the rule of each file comes from the ``benchmark:`` directives
  of ``workflow/rules/*.smk``, :func:`benchmark_patterns`), and the run's wall-clock time (given,
  or first to last timestamp of the newest Snakemake log of the results folder);
- ``{model}/transcoders``: quality of the trained transcoders, from each
  ``{results}/{model}/layer{L}/transcoder/report.json`` (rule train_transcoder);
- ``{model}/token-based-shares``, ``{model}/cluster-coverage``, ``{model}/rule-comparison``,
  ``{model}/paper-claims``, ``{model}/delphi-scores``, ``{model}/metric-table``: the summary's own markdown files (rule summarize), as they are, less
  their ``# title`` line, with their other headings moved two levels down.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from circuit_insights.core.errors import InputError
from circuit_insights.core.io import atomic_path
from circuit_insights.pipeline import paths
from circuit_insights.report.tables import markdown_table

COMMAND = "`make readme-figures`"

RUN_TIME = "run-time"
"""The block of job time by rule and the run's wall-clock time."""

SUMMARY_BLOCKS: dict[str, str] = {
    "token-based-shares": "token_based_shares.md",
    "cluster-coverage": "cluster_coverage.md",
    "rule-comparison": "rule_comparison.md",
    "paper-claims": "paper_claims.md",
    "delphi-scores": "delphi_table.md",
    "metric-table": "metric_table.md",
}
"""Per-model block kind -> the summary file (``{results}/{model}/summary/``) shown as it is."""

TRANSCODERS = "transcoders"
MODEL_BLOCKS: tuple[str, ...] = (TRANSCODERS, *SUMMARY_BLOCKS)
"""Per-model block kinds; the block of model M and kind K is named ``M/K``."""

TRANSCODER_KEYS = (
    "fvu",
    "mean_l0",
    "dead_share",
    "loss_clean",
    "loss_spliced",
    "loss_mlp_zero_ablated",
    "fraction_of_loss_recovered",
)
"""Keys of rule train_transcoder's ``report.json`` that the transcoder table reads."""

_MARKER = re.compile(r"^<!--\s*(/?)generated:(\S+?)\s*-->$")
_TIMESTAMP = re.compile(r"^\[(\w{3} \w{3} +\d{1,2} \d{2}:\d{2}:\d{2} \d{4})\]\s*$")
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}|\{(\w+)\}")
_BENCHMARK = re.compile(r"^[ \t]*benchmark:[ \t]*\n[ \t]*f?\"([^\"\n]+)\"", re.MULTILINE)
_RULE = re.compile(r"^[ \t]*rule(?:[ \t]+(\w+))?[ \t]*:", re.MULTILINE)
_RULE_NAME = re.compile(r"^[ \t]*name:[ \t]*\n?[ \t]*f?\"([^\"\n]+)\"", re.MULTILINE)
_BENCHMARK_PREFIX = "{RESULTS}/benchmarks/"


# --- sources ---------------------------------------------------------------------------------------


def run_date(files: Iterable[str | os.PathLike[str]]) -> str:
    """The newest modification date (UTC, ``YYYY-MM-DD``) of ``files``."""
    mtimes = [Path(f).stat().st_mtime for f in files]
    if not mtimes:
        raise InputError("no files to date the run by")
    return datetime.fromtimestamp(max(mtimes), tz=timezone.utc).strftime("%Y-%m-%d")


def source_line(sources: str, files: Iterable[str | os.PathLike[str]]) -> str:
    """A block's first line: where its figures come from and the date of the run."""
    return f"_Generated from {sources} (run of {run_date(files)}) by {COMMAND}._"


def _require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise InputError(f"{path} does not exist ({what})")
    return path


# --- job time by rule ------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchmarkPattern:
    """One ``benchmark:`` directive: the rule and its path under ``{results}/benchmarks/``."""

    rule: str
    """The rule's name, ``cache_{model}`` read as ``cache`` (one rule per model, one name)."""
    template: str
    """The path in the rule, less ``{RESULTS}/benchmarks/``, placeholders as ``{name}``."""
    regex: re.Pattern[str]
    """Matches a benchmark file's path relative to ``{results}/benchmarks`` (``/``-separated)."""
    smk: Path
    """The rule file it comes from."""


def _template_regex(template: str) -> re.Pattern[str]:
    """``{model}/layer{layer}/x/{shard}.tsv`` -> a regex; a placeholder is one path part."""
    parts: list[str] = []
    last = 0
    for match in _PLACEHOLDER.finditer(template):
        parts.append(re.escape(template[last : match.start()]))
        parts.append("[^/]+")
        last = match.end()
    parts.append(re.escape(template[last:]))
    return re.compile("".join(parts))


def _rule_before(text: str, position: int, smk: Path) -> str:
    """The name of the last rule declared before ``position`` in ``text`` (a .smk file's)."""
    rules = [m for m in _RULE.finditer(text) if m.start() < position]
    if not rules:
        raise InputError(f"{smk}: a benchmark: directive outside any rule")
    declared = rules[-1]
    if declared.group(1):
        return declared.group(1)
    named = _RULE_NAME.search(text, declared.end(), position)
    if named is None:
        raise InputError(f"{smk}: an anonymous rule with a benchmark: directive has no name:")
    # cache_{cached_model} -> cache: the per-model rules of one .smk share one name here.
    return re.sub(r"_?\{[^}]*\}", "", named.group(1))


def benchmark_patterns(rules_dir: str | os.PathLike[str]) -> list[BenchmarkPattern]:
    """Every ``benchmark:`` directive of the ``*.smk`` files in ``rules_dir``, with its rule."""
    folder = Path(rules_dir)
    found: list[BenchmarkPattern] = []
    for smk in sorted(folder.glob("*.smk")):
        text = smk.read_text(encoding="utf-8")
        for match in _BENCHMARK.finditer(text):
            path = match.group(1)  # an f-string: {{wildcard}} and {python_name}
            if not path.startswith(_BENCHMARK_PREFIX):
                raise InputError(
                    f"{smk}: benchmark path {path!r} does not start with {_BENCHMARK_PREFIX!r}"
                )
            template = path.removeprefix(_BENCHMARK_PREFIX).replace("{{", "{").replace("}}", "}")
            found.append(
                BenchmarkPattern(
                    _rule_before(text, match.start(), smk), template, _template_regex(template), smk
                )
            )
    if not found:
        raise InputError(f"{folder}: no benchmark: directive in any *.smk file")
    return found


def rule_of_benchmark(
    path: str | os.PathLike[str], benchmarks_dir: Path, patterns: Sequence[BenchmarkPattern]
) -> str:
    """The rule that wrote the benchmark file ``path`` (under ``benchmarks_dir``)."""
    relative = Path(path).relative_to(benchmarks_dir).as_posix()
    rules = sorted({p.rule for p in patterns if p.regex.fullmatch(relative)})
    if not rules:
        raise InputError(
            f"{path} matches no benchmark: directive of the rules "
            f"({', '.join(sorted({p.template for p in patterns}))})"
        )
    if len(rules) > 1:
        raise InputError(f"{path} matches the benchmarks of several rules: {', '.join(rules)}")
    return rules[0]


def _number_or_none(text: str | None) -> float | None:
    try:
        value = float(text) if text is not None else math.nan
    except ValueError:  # Snakemake writes NA / - where it measured nothing
        return None
    return None if math.isnan(value) else value


def read_benchmark(path: str | os.PathLike[str]) -> tuple[float, float | None]:
    """Seconds (summed over the file's rows, one per repeat) and peak ``max_rss`` (MB, or None
    where not measured) of one Snakemake benchmark file."""
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    if not rows or "s" not in rows[0]:
        raise InputError(f"{path}: not a Snakemake benchmark file (no rows with an 's' column)")
    seconds = [_number_or_none(row["s"]) for row in rows]
    if any(s is None for s in seconds):
        raise InputError(f"{path}: column 's' holds a value that is not a number")
    rss = [r for r in (_number_or_none(row.get("max_rss")) for row in rows) if r is not None]
    return sum(s for s in seconds if s is not None), max(rss) if rss else None


@dataclass(frozen=True)
class RuleTime:
    """Job time of one rule over its benchmark files."""

    rule: str
    jobs: int
    total_seconds: float
    max_seconds: float
    peak_max_rss_mb: float | None
    """The largest ``max_rss`` (MB) of its jobs; None where none was measured."""


def benchmark_files(results_dir: str | os.PathLike[str]) -> list[Path]:
    """Every ``*.tsv`` under ``{results_dir}/benchmarks``; an error naming the folder if none."""
    folder = Path(results_dir) / "benchmarks"
    files = sorted(folder.rglob("*.tsv"))
    if not files:
        raise InputError(f"{folder} holds no benchmark files (*.tsv): has the run finished?")
    return files


def job_times(
    files: Sequence[Path], benchmarks_dir: Path, patterns: Sequence[BenchmarkPattern]
) -> list[RuleTime]:
    """Per rule: jobs, total and largest seconds, peak ``max_rss``; the costliest rule first."""
    by_rule: dict[str, list[tuple[float, float | None]]] = {}
    for path in files:
        by_rule.setdefault(rule_of_benchmark(path, benchmarks_dir, patterns), []).append(
            read_benchmark(path)
        )
    times = []
    for rule, jobs in by_rule.items():
        rss = [r for _, r in jobs if r is not None]
        times.append(
            RuleTime(
                rule=rule,
                jobs=len(jobs),
                total_seconds=sum(s for s, _ in jobs),
                max_seconds=max(s for s, _ in jobs),
                peak_max_rss_mb=max(rss) if rss else None,
            )
        )
    return sorted(times, key=lambda t: (-t.total_seconds, t.rule))


def _log_header(text: str, key: str) -> str | None:
    match = re.search(rf"^\s*{re.escape(key)}:\s*(.+?)\s*$", text, re.MULTILINE)
    return match.group(1) if match else None


def log_results_dir(log_path: str | os.PathLike[str]) -> Path:
    """The results folder of the Snakemake run a log belongs to: ``results_dir=`` of its command
    line, else the schema's default ``results``, under the run's working directory."""
    log = Path(log_path)
    text = log.read_text(encoding="utf-8", errors="replace")
    workdir = _log_header(text, "Working directory")
    base = Path(workdir) if workdir else log.resolve().parents[2]
    command = _log_header(text, "Command") or ""
    given = re.search(r"(?:^|\s)results_dir=(\S+)", command)
    return (base / (given.group(1) if given else "results")).resolve()


def log_timestamps(log_path: str | os.PathLike[str]) -> list[datetime]:
    """The job timestamps (``[Tue Nov 24 20:06:19 2026]`` lines) of a Snakemake log, in order."""
    stamps = []
    for line in Path(log_path).read_text(encoding="utf-8", errors="replace").splitlines():
        match = _TIMESTAMP.match(line)
        if match:
            stamps.append(
                datetime.strptime(" ".join(match.group(1).split()), "%a %b %d %H:%M:%S %Y")
            )
    return stamps


def log_wall_seconds(log_path: str | os.PathLike[str]) -> float:
    """Seconds from the first to the last timestamp of a Snakemake log."""
    stamps = log_timestamps(log_path)
    if len(stamps) < 2:
        raise InputError(f"{log_path}: fewer than two timestamps, no wall-clock time")
    return (stamps[-1] - stamps[0]).total_seconds()


def run_log(log_dir: str | os.PathLike[str], results_dir: str | os.PathLike[str]) -> Path | None:
    """The newest Snakemake log in ``log_dir`` of a run into ``results_dir`` with at least two
    timestamps (runs into other folders, e.g. the tests', are passed over); None if none."""
    target = Path(results_dir).resolve()
    logs = sorted(Path(log_dir).glob("*.snakemake.log"), key=lambda p: p.stat().st_mtime)
    for log in reversed(logs):
        if log_results_dir(log) == target and len(log_timestamps(log)) >= 2:
            return log
    return None


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def _rss(mb: float | None) -> str:
    return "n/a" if mb is None else f"{mb / 1024:.1f} GiB"


def run_time_table(
    results_dir: str | os.PathLike[str],
    *,
    rules_dir: str | os.PathLike[str],
    wall_seconds: float | None = None,
    log_dir: str | os.PathLike[str] | None = None,
) -> str:
    """The ``run-time`` block: the run's wall-clock time and job time by rule.

    ``wall_seconds``: the run's wall-clock time when known; else the first to last timestamp of
    the newest Snakemake log in ``log_dir`` (default ``.snakemake/log`` next to the results
    folder) of a run into ``results_dir``; else the block says it is not known.
    """
    results = Path(results_dir)
    benchmarks = results / "benchmarks"
    files = benchmark_files(results)
    times = job_times(files, benchmarks, benchmark_patterns(rules_dir))
    read: list[Path] = list(files)
    if wall_seconds is not None:
        wall = f"{_minutes(wall_seconds)} (given with `--wall-seconds`)"
    else:
        logs = Path(log_dir) if log_dir is not None else results.resolve().parent / ".snakemake/log"
        log = run_log(logs, results)
        if log is None:
            wall = f"not known (no Snakemake log of a run into {results} in {logs})"
        else:
            read.append(log)
            wall = (
                f"{_minutes(log_wall_seconds(log))} (first to last timestamp of the last "
                f"invocation's log, {log.name})"
            )
    rows = [
        [
            t.rule,
            str(t.jobs),
            f"{t.total_seconds:,.0f}",
            f"{t.max_seconds:,.0f}",
            _rss(t.peak_max_rss_mb),
        ]
        for t in times
    ]
    rss_all = [t.peak_max_rss_mb for t in times if t.peak_max_rss_mb is not None]
    rows.append(
        [
            "all",
            str(sum(t.jobs for t in times)),
            f"{sum(t.total_seconds for t in times):,.0f}",
            f"{max(t.max_seconds for t in times):,.0f}",
            _rss(max(rss_all) if rss_all else None),
        ]
    )
    header = ["rule", "jobs", "total s", "longest job s", "peak memory (max_rss)"]
    return "\n".join(
        [
            source_line(f"the {len(files)} benchmark files under {benchmarks}", read),
            "",
            f"Wall-clock time: {wall}. Job time by rule, from each job's latest benchmark file "
            "(jobs not rerun keep the benchmark of their earlier run):",
            "",
            markdown_table(header, rows, ["l", "r", "r", "r", "r"]),
        ]
    )


# --- trained transcoders ---------------------------------------------------------------------------


def transcoder_reports(results_dir: str | os.PathLike[str], model: str) -> dict[int, Path]:
    """Layer -> ``report.json`` of rule train_transcoder, for each layer of ``model`` that has one."""
    found: dict[int, Path] = {}
    for path in Path(results_dir, model).glob("layer*/transcoder/report.json"):
        layer = path.parent.parent.name.removeprefix("layer")
        if layer.isdigit():
            found[int(layer)] = path
    return dict(sorted(found.items()))


def read_transcoder_report(path: str | os.PathLike[str]) -> dict[str, Any]:
    """One ``report.json``, checked for the keys the table reads."""
    try:
        report = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise InputError(f"{path}: not JSON ({error})") from error
    if not isinstance(report, dict):
        raise InputError(f"{path}: not a JSON object")
    missing = [key for key in TRANSCODER_KEYS if key not in report]
    if missing:
        raise InputError(f"{path}: no {', '.join(missing)} (not rule train_transcoder's report?)")
    return report


def _fixed(value: Any, digits: int) -> str:
    number = float(value) if value is not None else math.nan
    return "n/a" if math.isnan(number) else f"{number:.{digits}f}"


def _values(reports: Mapping[int, Mapping[str, Any]], key: str) -> str:
    values = [f"{int(r[key]):,}" for r in reports.values() if r.get(key) is not None]
    return " / ".join(dict.fromkeys(values)) or "n/a"


def transcoder_table(results_dir: str | os.PathLike[str], model: str) -> str:
    """The ``{model}/transcoders`` block: per layer FVU, L0, dead share, loss clean -> spliced
    (MLP zero-ablated) and the fraction of loss recovered (rule train_transcoder's reports)."""
    files = transcoder_reports(results_dir, model)
    if not files:
        raise InputError(
            f"{paths.transcoder_report(str(results_dir), model, '{L}')} does not exist for any "
            f"layer (model {model} has no trained transcoder)"
        )
    reports = {layer: read_transcoder_report(path) for layer, path in files.items()}
    rows = [
        [
            str(layer),
            _fixed(r["fvu"], 3),
            _fixed(r["mean_l0"], 1),
            f"{100 * float(r['dead_share']):.1f}%",
            f"{_fixed(r['loss_clean'], 3)} -> {_fixed(r['loss_spliced'], 3)} "
            f"({_fixed(r['loss_mlp_zero_ablated'], 3)})",
            _fixed(r["fraction_of_loss_recovered"], 2),
        ]
        for layer, r in reports.items()
    ]
    header = [
        "layer",
        "FVU",
        "L0",
        "dead",
        "loss clean -> spliced (MLP zero-ablated)",
        "fraction of loss recovered",
    ]
    pattern = paths.transcoder_report(str(results_dir), model, "{L}")
    return "\n".join(
        [
            source_line(pattern, files.values()),
            "",
            f"Features {_values(reports, 'n_features')}, training steps {_values(reports, 'steps')}, "
            f"held-out tokens {_values(reports, 'n_held_out_tokens')} (per layer where they differ).",
            "",
            markdown_table(header, rows, ["r", "r", "r", "r", "l", "r"]),
        ]
    )


# --- the summary's own tables ----------------------------------------------------------------------


def summary_markdown(text: str) -> str:
    """A summary markdown file less its ``# title`` line, other headings two levels down (so
    they nest under the README section that holds the block)."""
    lines = text.splitlines()
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    while lines and not lines[0].strip():
        lines = lines[1:]
    demoted = ["##" + line if re.match(r"#{1,4} ", line) else line for line in lines]
    return "\n".join(demoted).rstrip() + "\n"


def summary_block(results_dir: str | os.PathLike[str], model: str, kind: str) -> str:
    """The block ``{model}/{kind}`` of a summary markdown file (:data:`SUMMARY_BLOCKS`)."""
    if kind not in SUMMARY_BLOCKS:
        raise InputError(f"no summary block {kind!r} (known: {', '.join(SUMMARY_BLOCKS)})")
    path = Path(paths.summary_file(str(results_dir), model, SUMMARY_BLOCKS[kind]))
    _require_file(path, f"block {model}/{kind}, written by rule summarize")
    text = summary_markdown(path.read_text(encoding="utf-8"))
    return source_line(str(path), [path]) + "\n\n" + text


# --- the README's marked blocks --------------------------------------------------------------------


def marked_blocks(text: str, where: str = "README") -> dict[str, tuple[int, int]]:
    """Name -> (line of the opening marker, line of the closing marker), 0-based.

    Errors name the line (1-based) of an unbalanced, nested or repeated marker."""
    found: dict[str, tuple[int, int]] = {}
    open_name: str | None = None
    open_line = 0
    for number, line in enumerate(text.splitlines()):
        match = _MARKER.match(line.strip())
        if match is None:
            continue
        closing, name = match.group(1) == "/", match.group(2)
        if not closing:
            if open_name is not None:
                raise InputError(
                    f"{where} line {number + 1}: marker generated:{name} opens inside "
                    f"generated:{open_name} (opened line {open_line + 1})"
                )
            if name in found:
                raise InputError(f"{where} line {number + 1}: a second block generated:{name}")
            open_name, open_line = name, number
        elif open_name != name:
            raise InputError(
                f"{where} line {number + 1}: /generated:{name} closes "
                + (f"generated:{open_name}" if open_name else "no open block")
            )
        else:
            found[name] = (open_line, number)
            open_name = None
    if open_name is not None:
        raise InputError(f"{where} line {open_line + 1}: generated:{open_name} is never closed")
    return found


def replace_blocks(text: str, blocks: Mapping[str, str], where: str = "README") -> str:
    """``text`` with the lines between each block's markers replaced by the block (markers kept).

    A marked name with no block stays as is; a block with no markers is an error naming it."""
    marked = marked_blocks(text, where)
    unmarked = sorted(set(blocks) - set(marked))
    if unmarked:
        raise InputError(
            f"{where} has no markers for the block(s) {', '.join(unmarked)}: add "
            + "; ".join(f"<!-- generated:{n} --> ... <!-- /generated:{n} -->" for n in unmarked)
        )
    lines = text.splitlines(keepends=True)
    for name, (start, stop) in sorted(marked.items(), key=lambda item: -item[1][0]):
        if name in blocks:
            body = blocks[name].strip("\n")
            lines[start + 1 : stop] = [line + "\n" for line in body.split("\n")] + ["\n"]
    return "".join(lines)


def update_readme(readme_path: str | os.PathLike[str], blocks: Mapping[str, str]) -> bool:
    """Replace the marked blocks of the README at ``readme_path`` (:func:`replace_blocks`),
    atomically, keeping its permissions. Returns whether its text changed."""
    readme = _require_file(Path(readme_path), "the README to update")
    old = readme.read_text(encoding="utf-8")
    new = replace_blocks(old, blocks, str(readme))
    if new == old:
        return False
    with atomic_path(readme) as tmp:
        tmp.write_text(new, encoding="utf-8")
        os.chmod(tmp, stat.S_IMODE(readme.stat().st_mode))
    return True


# --- every block -----------------------------------------------------------------------------------


def models_with_summary(results_dir: str | os.PathLike[str]) -> list[str]:
    """The model folders under ``results_dir`` that have a ``summary/`` folder."""
    results = Path(results_dir)
    if not results.is_dir():
        raise InputError(f"{results} does not exist (the results folder)")
    return sorted(p.parent.name for p in results.glob("*/summary") if p.is_dir())


def available_blocks(results_dir: str | os.PathLike[str], models: Iterable[str]) -> list[str]:
    """The blocks of ``models`` (and ``run-time``) whose input files exist in ``results_dir``."""
    results = Path(results_dir)
    names = [RUN_TIME] if any((results / "benchmarks").rglob("*.tsv")) else []
    for model in models:
        if transcoder_reports(results, model):
            names.append(f"{model}/{TRANSCODERS}")
        names += [
            f"{model}/{kind}"
            for kind, file in SUMMARY_BLOCKS.items()
            if Path(paths.summary_file(str(results), model, file)).is_file()
        ]
    return names


def build_block(
    name: str,
    results_dir: str | os.PathLike[str],
    *,
    rules_dir: str | os.PathLike[str],
    wall_seconds: float | None = None,
    log_dir: str | os.PathLike[str] | None = None,
) -> str:
    """The text of the block ``name`` (``run-time`` or ``{model}/{kind}``)."""
    if name == RUN_TIME:
        return run_time_table(
            results_dir, rules_dir=rules_dir, wall_seconds=wall_seconds, log_dir=log_dir
        )
    model, _, kind = name.rpartition("/")
    if not model or kind not in MODEL_BLOCKS:
        raise InputError(
            f"no block {name!r}: known are {RUN_TIME} and MODEL/KIND with KIND one of "
            + ", ".join(MODEL_BLOCKS)
        )
    if kind == TRANSCODERS:
        return transcoder_table(results_dir, model)
    return summary_block(results_dir, model, kind)


def readme_blocks(
    names: Iterable[str],
    results_dir: str | os.PathLike[str],
    *,
    rules_dir: str | os.PathLike[str],
    wall_seconds: float | None = None,
    log_dir: str | os.PathLike[str] | None = None,
) -> dict[str, str]:
    """Name -> text of each block in ``names``; a missing input is an error naming the file."""
    return {
        name: build_block(
            name, results_dir, rules_dir=rules_dir, wall_seconds=wall_seconds, log_dir=log_dir
        )
        for name in names
    }


def is_block_name(name: str, models: Sequence[str] | None = None) -> bool:
    """Whether ``name`` is ``run-time`` or ``{model}/{kind}`` (of one of ``models`` if given)."""
    model, _, kind = name.rpartition("/")
    return name == RUN_TIME or (
        bool(model) and kind in MODEL_BLOCKS and (models is None or model in models)
    )


def blocks_to_write(
    readme_text: str, models: Sequence[str] | None = None, where: str = "README"
) -> list[str]:
    """The names of this module's blocks that the README marks, in README order: every one, or
    ``run-time`` and those of ``models``. Other marked blocks are not this module's."""
    marked = marked_blocks(readme_text, where)
    ordered = sorted(marked, key=lambda name: marked[name][0])
    return [name for name in ordered if is_block_name(name, models)]


README_PLOTS: dict[str, str] = {"rule_comparison.png": "rule_comparison.png"}
"""Summary plot (``{results}/{model}/summary/plots/``) -> the image the README shows."""


def copy_plots(
    results_dir: str | os.PathLike[str],
    model: str,
    image_dir: str | os.PathLike[str],
    plots: Mapping[str, str] = README_PLOTS,
) -> list[Path]:
    """Copy the summary plots the README shows into ``image_dir`` (atomically); a missing
    plot is an :class:`InputError` naming it. Returns the written images."""
    written = []
    for plot, image in plots.items():
        source = _require_file(
            Path(paths.summary_file(str(results_dir), model, "plots")) / plot, "summary plot"
        )
        target = Path(image_dir) / image
        with atomic_path(target) as tmp:
            tmp.write_bytes(source.read_bytes())
            tmp.chmod(0o644)  # an image in the repository, readable by all like its neighbours
        written.append(target)
    return written
