"""Preflight of folders and corpus files: ``results_dir`` / ``resources_dir`` and ``corpus.paths``."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from circuit_insights.core.errors import InputError

# --- folders and corpus files ------------------------------------------------------------------


def check_output_folder(key: str, path: str | Path) -> None:
    """``path`` (config key ``key``) is a folder, or does not exist yet and can be created: no
    ancestor is a file and the nearest existing one takes a new folder (tried with a temporary
    folder, removed at once; nothing is left at ``path``)."""
    path = Path(path).expanduser()
    for candidate in (path, *path.parents):
        if candidate.exists() and not candidate.is_dir():
            what = "it is a file" if candidate == path else f"{candidate} is a file"
            raise InputError(f"config key {key!r}: {path} must be a folder, but {what}")
    if path.is_dir():
        if not os.access(path, os.W_OK | os.X_OK):
            raise InputError(f"config key {key!r}: folder {path} is not writable")
        return
    existing = next(parent for parent in path.absolute().parents if parent.is_dir())
    try:
        tempfile.TemporaryDirectory(dir=existing, prefix=".preflight-").cleanup()
    except OSError as error:
        raise InputError(
            f"config key {key!r}: folder {path} cannot be created: nothing can be written "
            f"in {existing} ({error.strerror or error})"
        ) from None


def _corpus_files(path: Path) -> list[Path]:
    """The corpus files a path of ``corpus.paths`` stands for (a folder: the files inside)."""
    from circuit_insights.data.documents import FILE_EXTENSIONS

    if not path.is_dir():
        if path.suffix not in FILE_EXTENSIONS:
            raise InputError(
                f"config key 'corpus.paths': corpus file {path} has unknown suffix "
                f"{path.suffix!r} (expected one of {', '.join(FILE_EXTENSIONS)})"
            )
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in FILE_EXTENSIONS)
    if not files:
        raise InputError(
            f"config key 'corpus.paths': folder {path} holds no corpus file "
            f"({', '.join(FILE_EXTENSIONS)})"
        )
    return files


def check_corpus_files(corpus: Mapping[str, Any]) -> None:
    """Every file of ``corpus.paths`` (folders: the corpus files inside) has a known suffix; the
    text files are UTF-8 text, the ``.parquet`` files start as parquet does."""
    from circuit_insights.data.documents import check_text_file

    if corpus["source"] != "files":
        return
    for raw in corpus["paths"]:
        for file in _corpus_files(Path(raw)):
            if file.suffix == ".parquet":
                with open(file, "rb") as handle:
                    if handle.read(4) != b"PAR1":
                        raise InputError(
                            f"config key 'corpus.paths': corpus file {file} is not a parquet "
                            "file (it does not start with PAR1)"
                        )
                continue
            try:
                check_text_file(file)
            except InputError as error:
                raise InputError(f"config key 'corpus.paths': {error}") from None
