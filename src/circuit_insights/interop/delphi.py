"""delphi's explanation and score files: read into the tidy frame, write ours in its layout.

delphi (EleutherAI/delphi, ``delphi/__main__.py`` ``run`` / ``process_cache``) keeps a run under
``results/<name>/``: ``run_config.json`` (its ``RunConfig``, ``delphi/config.py``: ``model``,
``sparse_model``, ``hookpoints``, ``explainer_model``, ``scorers``, ``name``, ...),
``explanations/<latent>.txt`` and ``scores/<scorer>/<latent>.txt``, where ``<latent>`` is
``{module}_latent{index}`` (``Latent.__repr__``, ``delphi/latents/latents.py``; a ``/`` in a score
file's name becomes ``--``). An explanation file holds the explanation as a JSON string
(``orjson.dumps``); a score file the scorer's output as JSON: for the classifier scorers
(``fuzz``, ``detection``) a list of samples with ``activating`` and ``prediction``, which
``delphi/log/result_analysis.py`` turns into a balanced accuracy.

The module's layer is looked up in the explicit table ``TranscoderSet.modules`` (default
``layers.{layer}.mlp``); a module not in it is refused, naming the file.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from circuit_insights.core.errors import InputError
from circuit_insights.core.io import atomic_path
from circuit_insights.interop.table import exported_explanations, imported_frame, score_table
from circuit_insights.interop.target import TranscoderSet

NAME = "delphi"
#: Columns of :func:`read_delphi_scores`.
SCORE_FRAME_COLUMNS: tuple[str, ...] = (
    "layer",
    "feature",
    "source_id",
    "method",
    "scorer",
    "score",
)
_LATENT_FILE = re.compile(r"^(?P<module>.+)_latent(?P<index>\d+)\.txt$")


def latent_name(module: str, index: int) -> str:
    """delphi's name of latent ``index`` of ``module``: ``f"{module}_latent{index}"``."""
    return f"{module}_latent{index}"


def read_delphi(
    path: str | os.PathLike[str], *, target: TranscoderSet, explainer_model: str | None = None
) -> pd.DataFrame:
    """The explanations of the delphi run at ``path`` (its folder, or its ``explanations``
    folder) as the tidy frame (``interop.table``).

    ``explainer_model`` defaults to the run's ``run_config.json`` ``explainer_model``; without
    either, :class:`InputError`. ``method`` is the run's ``name`` ("" without one). A ``.txt``
    file not named ``{module}_latent{index}.txt``, a module not in ``target.modules``, a feature
    at or above ``target.width`` or content that is not a JSON string raises
    :class:`InputError` naming the file.

    A folder holding no explanation files but run folders (as :func:`write_delphi` writes)
    reads every run in it, in name order.
    """
    runs = _runs_in(Path(path))
    if runs:
        frames = [read_delphi(run, target=target, explainer_model=explainer_model) for run in runs]
        return imported_frame(row for frame in frames for row in frame.to_dict("records"))
    run, folder = _run_folders(Path(path))
    config = _run_config(run)
    model = explainer_model if explainer_model is not None else config.get("explainer_model")
    if not isinstance(model, str):
        raise InputError(
            f"delphi run {run}: the explainer model is unknown (no run_config.json with "
            "'explainer_model'); give it"
        )
    files = sorted(folder.glob("*.txt"))
    if not files:
        raise InputError(f"delphi explanations {folder}: no <module>_latent<index>.txt files")
    rows: list[dict[str, Any]] = []
    for file in files:
        module, layer, feature = _latent(file, target=target)
        description = _json(file)
        if not isinstance(description, str):
            raise InputError(f"delphi explanation {file}: the content is not a JSON string")
        rows.append(
            {
                "layer": layer,
                "feature": feature,
                "description": description,
                "source": NAME,
                "explainer_model": model,
                "source_id": module,
                "method": str(config.get("name") or ""),
            }
        )
    return imported_frame(rows)


def read_delphi_scores(path: str | os.PathLike[str], *, target: TranscoderSet) -> pd.DataFrame:
    """The scores of the delphi run at ``path`` (or of every run in a folder of runs): one row
    per (latent, scorer) with columns :data:`SCORE_FRAME_COLUMNS` (``method``: the run's
    ``name``). A score file holding a number gives it; a classifier scorer's list of samples
    gives their balanced accuracy as delphi computes it (``compute_classification_metrics``: the
    mean of the true-positive and true-negative rates, a rate 0 when its class is empty; samples
    without a prediction left out). Bad file names and contents raise :class:`InputError`."""
    runs = _runs_in(Path(path)) or [_run_folders(Path(path))[0]]
    rows: list[dict[str, Any]] = []
    for run in runs:
        scores_dir = run / "scores"
        if not scores_dir.is_dir():
            raise InputError(f"delphi run {run}: no scores folder")
        method = str(_run_config(run).get("name") or "")
        for scorer in sorted(p for p in scores_dir.iterdir() if p.is_dir()):
            for file in sorted(scorer.glob("*.txt")):
                module, layer, feature = _latent(file, target=target)
                rows.append(
                    {
                        "layer": layer,
                        "feature": feature,
                        "source_id": module,
                        "method": method,
                        "scorer": scorer.name,
                        "score": _score(_json(file), file),
                    }
                )
    frame = pd.DataFrame(rows, columns=list(SCORE_FRAME_COLUMNS))
    order = ["layer", "feature", "method", "scorer"]
    return frame.sort_values(order, kind="stable").reset_index(drop=True)


def write_delphi(
    explanations: pd.DataFrame,
    path: str | os.PathLike[str],
    *,
    target: TranscoderSet,
    scores: pd.DataFrame | None = None,
) -> list[Path]:
    """Write our explanations under ``path`` as delphi runs, one per variant; return the run
    folders.

    Run ``path/<variant>/`` holds ``explanations/{module}_latent{feature}.txt`` (the final
    description as a JSON string), with ``scores``, ``scores/<metric>/{module}_latent{feature}.txt``
    (the value as a JSON number; metrics without a value are left out), and ``run_config.json``
    with delphi's ``name`` (the variant), ``model``, ``sparse_model`` (``target.source_set``),
    ``hookpoints``, ``explainer_model`` (the variant's LLM, "" for LLM-free ones) and
    ``scorers``. Files are written atomically; nothing already in ``path`` is removed.
    """
    rows = exported_explanations(explanations, what="delphi export")
    table = score_table(scores, what="delphi export")
    runs: list[Path] = []
    for variant, group in rows.groupby("variant", sort=True):
        run = Path(path) / str(variant)
        models = sorted({str(m) for m in group["llm_model"] if m})
        if len(models) > 1:
            raise InputError(f"delphi export: variant {variant!r} has several LLMs {models}")
        scorers: set[str] = set()
        modules: set[str] = set()
        for row in group.itertuples(index=False):
            layer, feature = int(row.layer), int(row.feature)
            target.check_feature(layer, feature, "delphi export")
            name = latent_name(target.module(layer), feature)
            modules.add(target.module(layer))
            _write(run / "explanations" / f"{name}.txt", str(row.description))
            for metric, value in table.get((layer, feature, str(variant)), []):
                scorers.add(metric)
                _write(run / "scores" / metric / f"{name.replace('/', '--')}.txt", value)
        config = {
            "name": str(variant),
            "model": target.model,
            "sparse_model": target.source_set,
            "hookpoints": sorted(modules),
            "explainer_model": models[0] if models else "",
            "scorers": sorted(scorers),
        }
        if scores is not None:
            (run / "scores").mkdir(parents=True, exist_ok=True)  # scored, if only by nothing
        _write(run / "run_config.json", config, indent=4)
        runs.append(run)
    return runs


def _runs_in(path: Path) -> list[Path]:
    """The run folders inside ``path`` when it is a folder of runs (no explanations of its
    own), else []."""
    if not path.is_dir() or path.name == "explanations" or (path / "explanations").is_dir():
        return []
    if any(path.glob("*.txt")):
        return []
    return sorted(p for p in path.iterdir() if (p / "explanations").is_dir())


def _run_folders(path: Path) -> tuple[Path, Path]:
    """(run folder, explanations folder) of a run given by either."""
    if not path.is_dir():
        raise InputError(f"delphi run {path}: no such folder")
    if path.name == "explanations":
        return path.parent, path
    if (path / "explanations").is_dir():
        return path, path / "explanations"
    return path, path


def _run_config(run: Path) -> dict[str, Any]:
    file = run / "run_config.json"
    if not file.is_file():
        return {}
    config = _json(file)
    if not isinstance(config, dict):
        raise InputError(f"delphi run config {file}: not a JSON object")
    return config


def _latent(file: Path, *, target: TranscoderSet) -> tuple[str, int, int]:
    """(module, layer, feature) of a file named ``{module}_latent{index}.txt``."""
    match = _LATENT_FILE.match(file.name)
    if match is None:
        raise InputError(f"delphi file {file}: not named <module>_latent<index>.txt")
    module = match.group("module").replace("--", "/")
    modules = target.modules
    if module not in modules:
        raise InputError(
            f"delphi file {file}: module {module!r} is not a configured layer's "
            f"(known modules: {', '.join(modules)})"
        )
    layer, feature = modules[module], int(match.group("index"))
    target.check_feature(layer, feature, f"delphi file {file}")
    return module, layer, feature


def _score(data: Any, file: Path) -> float:
    if isinstance(data, (int, float)) and not isinstance(data, bool):
        return float(data)
    if isinstance(data, list) and all(
        isinstance(s, dict) and "activating" in s and "prediction" in s for s in data
    ):
        return _balanced_accuracy(data)
    raise InputError(
        f"delphi score {file}: neither a number nor a list of classifier samples "
        "(with 'activating' and 'prediction')"
    )


def _balanced_accuracy(samples: Iterable[dict[str, Any]]) -> float:
    rated = [s for s in samples if s["prediction"] is not None]
    positives = [s for s in rated if s["activating"]]
    negatives = [s for s in rated if not s["activating"]]
    tp = sum(1 for s in positives if float(s["prediction"]) >= 0.5)
    tn = sum(1 for s in negatives if float(s["prediction"]) < 0.5)
    tpr = tp / len(positives) if positives else 0.0
    tnr = tn / len(negatives) if negatives else 0.0
    return (tpr + tnr) / 2


def _json(file: Path) -> Any:
    try:
        return json.loads(file.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"delphi file {file}: not JSON ({exc})") from exc


def _write(path: Path, value: Any, indent: int | None = None) -> None:
    """Write ``value`` as JSON (compact, as delphi's ``orjson.dumps``, unless ``indent``)."""
    separators = None if indent is not None else (",", ":")
    text = json.dumps(value, ensure_ascii=False, indent=indent, separators=separators)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
