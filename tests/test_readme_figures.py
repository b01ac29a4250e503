"""README figures from a finished run (tools/readme_blocks.py, tools/readme_figures.py),
on a results tree built here with the workflow's own writers."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from circuit_insights.core.errors import InputError
from circuit_insights.core.io import write_json_atomic
from circuit_insights.pipeline import paths
from circuit_insights.report.summary import write_summary
from circuit_insights.transcoders.base import Transcoder
from circuit_insights.transcoders.splicing import spliced_loss_report
from circuit_insights.transcoders.training import TrainingReport
from tests.test_delphi_table import score_rows
from tests.test_summary import fixture_evaluation, fixture_weightlens
from tools import readme_blocks as readme

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "workflow" / "rules"
MODEL = "gemma-3-270m"
SHARD = "f000000-000128"
#: The date every fixture file is given (UTC noon), so the blocks' "run of" date is known.
RUN_TIME = datetime(2026, 11, 24, 12, tzinfo=timezone.utc).timestamp()

#: Benchmark files in every path pattern of the rules: (path under benchmarks/, s, max_rss MB).
BENCHMARKS: list[tuple[str, float, float | None]] = [
    ("build_embedded_model.tsv", 65.5, 1647.71),
    ("build_embedded_llm.tsv", 10.0, None),
    ("report.tsv", 4.0, 300.0),
    (f"{MODEL}/corpus.tsv", 20.0, 500.0),
    (f"{MODEL}/clean_loss.tsv", 30.0, 900.0),
    (f"{MODEL}/collect_pairs.tsv", 27.0, 1900.0),
    (f"{MODEL}/summarize.tsv", 8.0, 400.0),
    (f"{MODEL}/layer3/train_transcoder.tsv", 100.0, 2000.0),
    (f"{MODEL}/layer8/train_transcoder.tsv", 150.25, 2560.0),
    (f"{MODEL}/cache/c000000-002000.tsv", 40.0, 1500.0),
    (f"{MODEL}/cache/c002000-004000.tsv", 50.0, 1600.0),
    (f"{MODEL}/layer3/merge_cache/{SHARD}.tsv", 2.0, 150.0),
    (f"{MODEL}/layer3/sample/{SHARD}.tsv", 5.0, 200.0),
    (f"{MODEL}/layer3/select_features/{SHARD}.tsv", 1.0, 100.0),
    (f"{MODEL}/layer3/weightlens/{SHARD}.tsv", 60.0, 1200.0),
    (f"{MODEL}/layer3/attribution/{SHARD}.tsv", 200.0, 3000.0),
    (f"{MODEL}/layer3/cluster/{SHARD}.tsv", 12.0, 700.0),
    (f"{MODEL}/layer3/explain/{SHARD}.tsv", 300.0, 1800.0),
    (f"{MODEL}/layer8/explain/{SHARD}.tsv", 200.5, None),
    (f"{MODEL}/layer3/evaluate/maxact/{SHARD}.tsv", 7.0, 1000.0),
    (f"{MODEL}/layer3/evaluate/cl_full/{SHARD}.tsv", 9.0, 1100.0),
    (f"{MODEL}/layer8/evaluate/maxact/{SHARD}.tsv", 11.0, 1050.0),
    (f"{MODEL}/layer3/evaluate_rules/{SHARD}.tsv", 25.0, 1400.0),
    (f"{MODEL}/layer3/delphi_rules/{SHARD}.tsv", 2.0, 300.0),
    (f"{MODEL}/layer3/delphi_llm/{SHARD}.tsv", 6.0, 350.0),
    (f"{MODEL}/layer8/twera/{SHARD}.tsv", 3.0, 800.0),
    (f"{MODEL}/import_explanations/neuronpedia.tsv", 1.5, 200.0),
    (f"{MODEL}/label_graph.tsv", 1.0, 180.0),
    (f"{MODEL}/export.tsv", 2.5, 250.0),
]

#: Rule train_transcoder's report of two layers: training figures and the spliced-loss figures.
LOSSES = {
    3: {
        "loss_clean": 3.666,
        "loss_spliced": 6.032,
        "loss_mlp_zero_ablated": 7.975,
        "fraction_of_loss_recovered": 0.4516,
    },
    8: {
        "loss_clean": 3.666,
        "loss_spliced": 3.824,
        "loss_mlp_zero_ablated": 3.936,
        "fraction_of_loss_recovered": float("nan"),
    },
}
TRAINING = {3: (0.3334, 28.04, 0.0), 8: (0.506, 16.9, 0.015625)}


def write_benchmark(path: Path, seconds: float, max_rss: float | None) -> None:
    """A benchmark file written by Snakemake's own writer (``NA`` where nothing was measured)."""
    from snakemake.benchmark import BenchmarkRecord, write_benchmark_records

    record = BenchmarkRecord(running_time=seconds, max_rss=max_rss)
    record.data_collected = max_rss is not None
    record.process_gone = True  # as for a job faster than the sampling interval: no warning
    path.parent.mkdir(parents=True, exist_ok=True)
    write_benchmark_records([record], str(path), False)


def transcoder_report(layer: int) -> dict[str, object]:
    """What rule train_transcoder writes (stages.train_transcoder), with chosen figures."""
    fvu, l0, dead = TRAINING[layer]
    training = TrainingReport(
        fvu=fvu,
        mean_l0=l0,
        dead_share=dead,
        steps=2000,
        final_loss=0.1,
        final_mse=0.05,
        n_train_tokens=64000,
        n_held_out_tokens=12600,
        seconds=110.0,
    )
    return {
        "model": MODEL,
        "layer": layer,
        "n_features": 128,
        **training.to_dict(),
        "loss_increase": LOSSES[layer]["loss_spliced"] - LOSSES[layer]["loss_clean"],
        **LOSSES[layer],
    }


def rule_rated(weightlens: pd.DataFrame) -> pd.DataFrame:
    """Rule-rated scores (rater ``rule``) of layer 3's WeightLens features."""
    rng = np.random.default_rng(0)
    rows = []
    for feature in weightlens.loc[weightlens["layer"] == 3, "feature"]:
        for variant in ("maxact_rule", "weightlens_rule"):
            value = float(rng.random())
            rows.append(
                {
                    "layer": 3,
                    "feature": int(feature),
                    "variant": variant,
                    "rater": "rule",
                    **{m: value for m in ("clarity", "responsiveness", "purity")},
                    **{f"{m}_reason": None for m in ("clarity", "responsiveness", "purity")},
                }
            )
    return pd.DataFrame(rows)


def clusters() -> list[pd.DataFrame]:
    def row(feature: int, cluster: int, n_samples: int, n_clusters: int) -> dict[str, object]:
        status = "clustered" if n_clusters else "all_noise"
        return {
            "layer": 3,
            "feature": feature,
            "cluster": cluster,
            "n_samples": n_samples,
            "n_clusters": n_clusters,
            "status": status,
        }

    return [pd.DataFrame([row(0, 0, 60, 1), row(0, -1, 40, 1)]), pd.DataFrame([row(1, -1, 100, 0)])]


@pytest.fixture(scope="module")
def run_results(tmp_path_factory) -> Path:
    """A finished run's results folder: benchmarks, transcoder reports, the model's summary."""
    results = tmp_path_factory.mktemp("run") / "results"
    for relative, seconds, rss in BENCHMARKS:
        write_benchmark(results / "benchmarks" / relative, seconds, rss)
    for layer in LOSSES:
        write_json_atomic(
            transcoder_report(layer), paths.transcoder_report(str(results), MODEL, layer)
        )
    weightlens = fixture_weightlens()
    write_summary(
        fixture_evaluation(),
        weightlens,
        paths.summary_file(str(results), MODEL, ""),
        model=MODEL,
        n_boot=50,
        rule_evaluation_frames=[rule_rated(weightlens)],
        clusters_frames=clusters(),
        delphi_frames=[score_rows("rule", "cl_rule", 3, [0.5, 0.7, 0.9], [0.1, 0.2, 0.3])],
    )
    for path in results.rglob("*"):
        os.utime(path, (RUN_TIME, RUN_TIME))
    return results


def write_log(path: Path, workdir: Path, command: str, stamps: list[str], mtime: float) -> Path:
    """A Snakemake log in the form Snakemake 9 writes (header, then job timestamps)."""
    lines = [
        "Assuming unrestricted shared filesystem usage.",
        "",
        "SNAKEMAKE",
        "=========",
        f"  Command: /venv/bin/snakemake {command}",
        f"  Working directory: {workdir}",
        "",
        "Building DAG of jobs...",
    ]
    for stamp in stamps:
        lines += [f"[{stamp}]", "localrule corpus:", "    jobid: 1", ""]
    lines += ["Complete log(s): " + str(path)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    os.utime(path, (mtime, mtime))
    return path


# --- job time by rule ------------------------------------------------------------------------------


def test_every_benchmark_directive_of_the_rules_is_read() -> None:
    patterns = readme.benchmark_patterns(RULES)
    smk_text = "".join(p.read_text() for p in RULES.glob("*.smk"))
    assert len(patterns) == smk_text.count("benchmark:")
    rules = {p.rule for p in patterns}
    assert {"cache", "collect_pairs", "evaluate", "evaluate_rules", "train_transcoder"} <= rules
    assert "report" in rules
    cache = next(p for p in patterns if p.rule == "cache")  # rule cache, per corpus chunk
    assert cache.regex.fullmatch(f"{MODEL}/cache/c000000-002000.tsv")


def test_job_time_by_rule_sums_the_benchmark_files(run_results: Path) -> None:
    benchmarks = run_results / "benchmarks"
    patterns = readme.benchmark_patterns(RULES)
    times = {
        t.rule: t
        for t in readme.job_times(readme.benchmark_files(run_results), benchmarks, patterns)
    }
    # The fixture has a file of every pattern, so every rule with a benchmark is here.
    assert set(times) == {p.rule for p in patterns}
    assert times["train_transcoder"] == readme.RuleTime(
        "train_transcoder", 2, 250.25, 150.25, 2560.0
    )
    assert times["evaluate"] == readme.RuleTime("evaluate", 3, 27.0, 11.0, 1100.0)
    assert times["explain"] == readme.RuleTime("explain", 2, 500.5, 300.0, 1800.0)
    assert times["cache"] == readme.RuleTime("cache", 2, 90.0, 50.0, 1600.0)
    assert times["build_embedded_llm"].peak_max_rss_mb is None  # NA: not measured
    ordered = readme.job_times(readme.benchmark_files(run_results), benchmarks, patterns)
    assert [t.rule for t in ordered[:3]] == ["explain", "train_transcoder", "attribution"]


def test_run_time_block_with_given_wall_time(run_results: Path) -> None:
    block = readme.run_time_table(run_results, rules_dir=RULES, wall_seconds=2250.0)
    lines = block.splitlines()
    assert lines[0] == (
        f"_Generated from the {len(BENCHMARKS)} benchmark files under {run_results / 'benchmarks'} "
        "(run of 2026-11-24) by `make readme-figures`._"
    )
    assert "Wall-clock time: 37.5 min (given with `--wall-seconds`)" in block
    assert "| train_transcoder | 2 | 250 | 150 | 2.5 GiB |" in lines
    assert "| explain | 2 | 500 | 300 | 1.8 GiB |" in lines
    assert "| build_embedded_llm | 1 | 10 | 10 | n/a |" in lines
    total = sum(s for _, s, _ in BENCHMARKS)
    assert f"| all | {len(BENCHMARKS)} | {total:,.0f} | 300 | 2.9 GiB |" in lines


def test_a_benchmark_file_of_no_rule_is_an_error_naming_it(tmp_path: Path) -> None:
    write_benchmark(tmp_path / "benchmarks" / "report.tsv", 1.0, 10.0)
    stray = tmp_path / "benchmarks" / MODEL / "layer3" / "stray.tsv"
    write_benchmark(stray, 1.0, 10.0)
    with pytest.raises(InputError, match=str(stray)):
        readme.run_time_table(tmp_path, rules_dir=RULES, wall_seconds=1.0)
    with pytest.raises(InputError, match="holds no benchmark files"):
        readme.run_time_table(tmp_path / "none", rules_dir=RULES)
    bad = tmp_path / "bad" / "benchmarks" / "report.tsv"
    bad.parent.mkdir(parents=True)
    bad.write_text("seconds\n1\n")
    with pytest.raises(InputError, match=f"{bad}: not a Snakemake benchmark"):
        readme.run_time_table(tmp_path / "bad", rules_dir=RULES, wall_seconds=1.0)


def test_wall_time_from_the_newest_log_of_the_run(tmp_path: Path) -> None:
    results = tmp_path / "results"
    write_benchmark(results / "benchmarks" / "report.tsv", 4.0, 300.0)
    logs = tmp_path / ".snakemake" / "log"
    write_log(
        logs / "2026-11-24T180000.000000.snakemake.log",
        tmp_path,
        "--cores 2 --configfile config/config.yaml",
        ["Tue Nov 24 18:00:00 2026", "Tue Nov 24 18:10:00 2026"],
        RUN_TIME,
    )
    run = write_log(
        logs / "2026-11-24T200619.000000.snakemake.log",
        tmp_path,
        "--cores 2 --configfile config/config.yaml --rerun-incomplete",
        ["Tue Nov 24 20:06:19 2026", "Tue Nov 24 20:30:00 2026", "Tue Nov 24 20:46:49 2026"],
        RUN_TIME + 10,
    )
    # Newer, but a test's run into another results folder: passed over.
    write_log(
        logs / "2026-11-24T210000.000000.snakemake.log",
        tmp_path,
        f"--cores 2 --config results_dir={tmp_path / 'other'}",
        ["Tue Nov 24 21:00:00 2026", "Tue Nov 24 23:00:00 2026"],
        RUN_TIME + 20,
    )
    assert readme.run_log(logs, results) == run
    assert readme.log_wall_seconds(run) == 40 * 60 + 30
    block = readme.run_time_table(results, rules_dir=RULES)
    assert (
        f"Wall-clock time: 40.5 min (first to last timestamp of the last invocation's log, {run.name})"
        in block
    )
    # Given, the wall time overrides the log.
    assert "12.0 min (given" in readme.run_time_table(results, rules_dir=RULES, wall_seconds=720)
    assert "not known" in readme.run_time_table(results, rules_dir=RULES, log_dir=tmp_path / "no")


def test_log_timestamps_with_a_space_padded_day(tmp_path: Path) -> None:
    log = write_log(
        tmp_path / "x.snakemake.log",
        tmp_path,
        "--cores 1",
        ["Wed Nov  4 23:59:30 2026", "Thu Nov  5 00:00:15 2026"],
        RUN_TIME,
    )
    assert readme.log_wall_seconds(log) == 45.0


# --- trained transcoders ---------------------------------------------------------------------------


def test_transcoder_table_from_the_reports(run_results: Path) -> None:
    block = readme.transcoder_table(run_results, MODEL)
    lines = block.splitlines()
    assert lines[0] == (
        f"_Generated from {run_results}/{MODEL}/layer{{L}}/transcoder/report.json "
        "(run of 2026-11-24) by `make readme-figures`._"
    )
    assert "Features 128, training steps 2,000, held-out tokens 12,600" in block
    assert "| 3 | 0.333 | 28.0 | 0.0% | 3.666 -> 6.032 (7.975) | 0.45 |" in lines
    assert "| 8 | 0.506 | 16.9 | 1.6% | 3.666 -> 3.824 (3.936) | n/a |" in lines
    assert lines.index("| 3 | 0.333 | 28.0 | 0.0% | 3.666 -> 6.032 (7.975) | 0.45 |") < (
        lines.index("| 8 | 0.506 | 16.9 | 1.6% | 3.666 -> 3.824 (3.936) | n/a |")
    )


def test_transcoder_table_reads_the_real_spliced_loss_report(tmp_path: Path) -> None:
    """The keys the table reads are those the training and splicing code write."""
    from tests.conftest import tiny_subject_model

    model = tiny_subject_model("llama")
    tokens = np.random.default_rng(0).integers(3, model.vocab_size, (4, 10))
    tokens[:, 0] = model.bos_token_id
    torch.manual_seed(0)
    transcoder = Transcoder(model.d_model, 16, layer=1)
    spliced = spliced_loss_report(model, transcoder, 1, tokens, 4)
    report = {**transcoder_report(3), **spliced, "layer": 1}
    write_json_atomic(report, paths.transcoder_report(str(tmp_path), "tiny", 1))
    block = readme.transcoder_table(tmp_path, "tiny")
    row = (
        f"| 1 | 0.333 | 28.0 | 0.0% | {spliced['loss_clean']:.3f} -> {spliced['loss_spliced']:.3f} "
        f"({spliced['loss_mlp_zero_ablated']:.3f}) | {spliced['fraction_of_loss_recovered']:.2f} |"
    )
    assert row in block.splitlines()


def test_transcoder_table_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=f"{tmp_path}/m/layer{{L}}/transcoder/report.json"):
        readme.transcoder_table(tmp_path, "m")
    path = Path(paths.transcoder_report(str(tmp_path), "m", 2))
    report = transcoder_report(3)
    del report["fraction_of_loss_recovered"]
    write_json_atomic(report, path)
    with pytest.raises(InputError, match=f"{path}: no fraction_of_loss_recovered"):
        readme.transcoder_table(tmp_path, "m")


# --- the summary's own tables ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(readme.SUMMARY_BLOCKS))
def test_summary_blocks_are_the_summary_files_less_their_title(
    run_results: Path, kind: str
) -> None:
    path = Path(paths.summary_file(str(run_results), MODEL, readme.SUMMARY_BLOCKS[kind]))
    text = path.read_text()
    block = readme.build_block(f"{MODEL}/{kind}", run_results, rules_dir=RULES)
    first, blank, *body = block.splitlines()
    assert first == f"_Generated from {path} (run of 2026-11-24) by `make readme-figures`._"
    assert blank == ""
    title, *rest = text.splitlines()
    assert title.startswith("# ") and not any(line.startswith("# ") for line in body)
    # Every table row of the file is in the block, in the same order.
    rows = [line for line in rest if line.startswith("|")]
    assert rows and [line for line in body if line.startswith("|")] == rows
    # Headings move two levels down; nothing else changes.
    assert [line.lstrip("#") for line in body] == [
        line.lstrip("#") for line in "\n".join(rest).strip("\n").splitlines()
    ]
    headings = [line for line in body if line.startswith("#")]
    assert all(line.startswith("####") for line in headings)
    assert len(headings) == len([line for line in rest if line.startswith("#")])


def test_metric_table_headings_move_down() -> None:
    text = "# Scores of m\n\nnote\n\n| a |\n|---|\n| 1 |\n## Missing values\n\n| b |\n"
    assert (
        readme.summary_markdown(text)
        == "note\n\n| a |\n|---|\n| 1 |\n#### Missing values\n\n| b |\n"
    )


def test_a_missing_summary_file_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=f"{tmp_path}/m/summary/rule_comparison.md does not exist"):
        readme.build_block("m/rule-comparison", tmp_path, rules_dir=RULES)
    with pytest.raises(InputError, match="no block 'm/plots'"):
        readme.build_block("m/plots", tmp_path, rules_dir=RULES)


# --- the README's marked blocks --------------------------------------------------------------------

README = """# Project

Intro, not generated.

<!-- generated:a -->
old a
old a, line 2
<!-- /generated:a -->

Between.

<!-- generated:b -->
old b
<!-- /generated:b -->

<!-- generated:someone-elses -->
kept
<!-- /generated:someone-elses -->
The end.
"""


def test_update_readme_replaces_only_the_marked_blocks(tmp_path: Path) -> None:
    path = tmp_path / "README.md"
    path.write_text(README)
    path.chmod(0o644)
    assert readme.update_readme(path, {"a": "new a\n\n| x |\n", "b": "new b"})
    assert path.read_text() == README.replace(
        "old a\nold a, line 2\n", "new a\n\n| x |\n\n"
    ).replace("old b\n", "new b\n\n")
    assert path.stat().st_mode & 0o777 == 0o644
    once = path.read_bytes()
    assert not readme.update_readme(path, {"a": "new a\n\n| x |\n", "b": "new b"})
    assert path.read_bytes() == once
    assert not list(tmp_path.glob("*.partial"))


def test_update_readme_errors(tmp_path: Path) -> None:
    path = tmp_path / "README.md"
    path.write_text(README)
    with pytest.raises(InputError, match="no markers for the block.s. c: add <!-- generated:c -->"):
        readme.update_readme(path, {"a": "x", "c": "y"})
    assert path.read_text() == README  # nothing written
    unclosed = README.replace("<!-- /generated:b -->\n", "")
    path.write_text(unclosed)
    with pytest.raises(
        InputError, match="line 15: marker generated:someone-elses opens inside generated:b"
    ):
        readme.update_readme(path, {"a": "x"})
    path.write_text(README.replace("<!-- /generated:someone-elses -->\n", ""))
    with pytest.raises(InputError, match="line 16: generated:someone-elses is never closed"):
        readme.update_readme(path, {"a": "x"})
    path.write_text(README.replace("<!-- generated:b -->\n", ""))
    with pytest.raises(InputError, match="line 13: /generated:b closes no open block"):
        readme.update_readme(path, {"a": "x"})
    path.write_text(README + "<!-- generated:a -->\n<!-- /generated:a -->\n")
    with pytest.raises(InputError, match="line 20: a second block generated:a"):
        readme.update_readme(path, {"a": "x"})
    with pytest.raises(InputError, match="missing.md does not exist"):
        readme.update_readme(tmp_path / "missing.md", {"a": "x"})


# --- the script ------------------------------------------------------------------------------------


def marked_readme(names: list[str]) -> str:
    parts = ["# Project", "", "Text around the blocks."]
    for name in names:
        parts += ["", f"<!-- generated:{name} -->", "typed by hand", f"<!-- /generated:{name} -->"]
    return "\n".join(parts) + "\n"


def test_script_rewrites_every_marked_block(run_results: Path, tmp_path: Path, capsys) -> None:
    from tools.readme_figures import main

    names = ["run-time", *(f"{MODEL}/{kind}" for kind in readme.MODEL_BLOCKS)]
    path = tmp_path / "README.md"
    path.write_text(marked_readme([*names, "other"]))
    argv = ["--results", str(run_results), "--readme", str(path), "--wall-seconds", "600"]
    assert main(argv) == 0
    text = path.read_text()
    assert "typed by hand" in text.split("<!-- generated:other -->")[1]  # not ours: kept
    assert text.count("typed by hand") == 1
    assert "| train_transcoder | 2 | 250 | 150 | 2.5 GiB |" in text
    assert "| 3 | 0.333 | 28.0 | 0.0% | 3.666 -> 6.032 (7.975) | 0.45 |" in text
    for kind, file in readme.SUMMARY_BLOCKS.items():
        block = text.split(f"<!-- generated:{MODEL}/{kind} -->\n")[1].split("<!-- /generated:")[0]
        source = Path(paths.summary_file(str(run_results), MODEL, file))
        assert block.startswith(f"_Generated from {source} (run of 2026-11-24)")
        assert block.strip("\n").endswith(readme.summary_markdown(source.read_text()).strip("\n"))
    assert text.startswith("# Project\n\nText around the blocks.\n")
    out = capsys.readouterr().out
    assert f"rewrote {', '.join(names)}" in out
    assert main(argv) == 0  # idempotent
    assert path.read_text() == text
    assert "unchanged" in capsys.readouterr().out


def test_script_names_a_missing_input_without_a_trace(run_results: Path, tmp_path: Path) -> None:
    path = tmp_path / "README.md"
    path.write_text(marked_readme([f"{MODEL}/transcoders", "absent-model/token-based-shares"]))
    before = path.read_text()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tools.readme_figures",
            "--results",
            str(run_results),
            "--readme",
            str(path),
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert f"{run_results}/absent-model/summary/token_based_shares.md does not exist" in done.stderr
    assert path.read_text() == before  # nothing written when a block fails
    path.write_text("# no markers\n")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tools.readme_figures",
            "--results",
            str(run_results),
            "--readme",
            str(path),
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 1 and "marks none of the blocks; available: run-time" in done.stderr


def test_script_model_option_leaves_other_models_blocks(run_results: Path, tmp_path: Path) -> None:
    from tools.readme_figures import main

    path = tmp_path / "README.md"
    path.write_text(marked_readme([f"{MODEL}/transcoders", "other-model/transcoders"]))
    assert main(["--results", str(run_results), "--readme", str(path), "--model", MODEL]) == 0
    text = path.read_text()
    assert text.split("<!-- generated:other-model/transcoders -->\n")[1].startswith(
        "typed by hand\n<!-- /generated:other-model/transcoders -->"
    )
    assert "| 8 | 0.506 | 16.9 | 1.6% |" in text.split("<!-- generated:other-model")[0]
    # Without --model, every marked block is written, so the other model's missing report stops it.
    assert main(["--results", str(run_results), "--readme", str(path)]) == 1


def test_the_readmes_plot_is_copied_from_the_summary(run_results: Path, tmp_path: Path) -> None:
    images = readme.copy_plots(run_results, MODEL, tmp_path / "img")
    source = Path(paths.summary_file(str(run_results), MODEL, "plots")) / "rule_comparison.png"
    assert images == [tmp_path / "img" / "rule_comparison.png"]
    assert images[0].read_bytes() == source.read_bytes()
    with pytest.raises(InputError, match="other/summary/plots/rule_comparison.png"):
        readme.copy_plots(run_results, "other", tmp_path / "img")
