"""Rewrite README.md's generated blocks from the last run's results (`make readme-figures`).

Each block between `<!-- generated:NAME -->` and `<!-- /generated:NAME -->` whose NAME is
`run-time` or `MODEL/KIND` (KIND: transcoders, token-based-shares, cluster-coverage,
rule-comparison, paper-claims, delphi-scores, metric-table) is rewritten from the run's files
(:mod:`tools.readme_blocks`; docs/CONVENTIONS.md). Run from the repository root:
``python -m tools.readme_figures``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from circuit_insights.core.errors import InputError
from tools import readme_blocks

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default="results", help="the run's results folder")
    parser.add_argument("--readme", default="README.md", help="the README to update")
    parser.add_argument(
        "--model",
        action="append",
        help="a model whose blocks to write (repeatable; default: every model the README marks)",
    )
    parser.add_argument(
        "--wall-seconds",
        type=float,
        help="the run's wall-clock time (default: from the newest Snakemake log of the run)",
    )
    parser.add_argument(
        "--log-dir", help="Snakemake's log folder (default: .snakemake/log next to --results)"
    )
    parser.add_argument(
        "--rules", default=str(ROOT / "workflow" / "rules"), help="the workflow's rule files"
    )
    parser.add_argument(
        "--image-dir",
        help="also copy the summary plots the README shows (rule_comparison.png) of the first "
        "model here (e.g. docs/img)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        readme_path = Path(args.readme)
        if not readme_path.is_file():
            raise InputError(f"{readme_path} does not exist (the README to update)")
        text = readme_path.read_text(encoding="utf-8")
        models = args.model or readme_blocks.models_with_summary(args.results)
        available = readme_blocks.available_blocks(args.results, models)
        names = readme_blocks.blocks_to_write(text, args.model, str(readme_path))
        if not names:
            raise InputError(
                f"{readme_path} marks none of the blocks; available: {', '.join(available)}"
            )
        blocks = readme_blocks.readme_blocks(
            names,
            args.results,
            rules_dir=args.rules,
            wall_seconds=args.wall_seconds,
            log_dir=args.log_dir,
        )
        changed = readme_blocks.update_readme(readme_path, blocks)
        images = (
            readme_blocks.copy_plots(args.results, models[0], args.image_dir)
            if args.image_dir
            else []
        )
    except (InputError, OSError) as error:
        print(f"readme_figures: {error}", file=sys.stderr)
        return 1
    unmarked = [name for name in available if name not in names]
    print(f"{readme_path}: {'rewrote' if changed else 'unchanged'} {', '.join(names)}")
    for image in images:
        print(f"copied {image}")
    if unmarked:
        print(f"not in {readme_path} (no markers): {', '.join(unmarked)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
