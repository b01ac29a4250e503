"""Train a transcoder on (MLP input, MLP output) pairs, for models without pretrained transcoders.

Recipe (Dunefsky et al. 2024; Anthropic's "Towards Monosemanticity" and its 2024 updates):

- Loss = ``mean_tokens ||y_hat - y||^2 + lambda_t * mean_tokens sum_i a_i ||W_dec[i]||``: MSE plus
  an L1 penalty on the activations weighted by the decoder row norms; ``lambda_t`` warms up
  linearly from 0 to ``l1_coefficient`` over the first ``l1_warmup_fraction`` of the steps.
- Adam; the learning rate is constant, then decays linearly to 0 over the last
  ``lr_decay_fraction`` of the steps.
- Decoder rows are kept at unit norm (the gradient component parallel to each row is removed
  before the step and the rows are renormalised after it), so the penalty is a plain L1 and no
  feature can buy sparsity by growing its decoder row.
- Init: random unit decoder rows, ``W_enc = 0.1 * W_dec.T`` (``encoder_init_scale``),
  ``b_dec_out = mean(y)``, ``W_skip = 0``;
  ``b_dec_in = mean(x)`` and ``b_enc = 0`` when centering the input, else
  ``b_enc = -mean(x) @ W_enc``: either way the initial pre-activations are centred, so no feature
  starts dead because of the activations' mean.
- Inputs and outputs are scaled during training so that ``E||x||^2 = E||y||^2 = d_model``
  (estimated on the first training batch), which makes ``l1_coefficient`` and ``learning_rate``
  comparable across models; the scales are folded back into the weights at the end, so the
  returned transcoder works on raw activations.

Everything is seeded (parameter init and batch order use one ``torch.Generator``), so a run on
CPU is deterministic for a given seed, data order and thread count.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from circuit_insights.core.errors import InputError
from circuit_insights.core.progress import Progress
from circuit_insights.transcoders.base import InputHook, OutputHook, Transcoder

logger = logging.getLogger(__name__)

Batch = tuple[Tensor, Tensor]
"""``(x, y)``: MLP inputs and outputs, each (n_tokens, d_model) (leading dims are flattened)."""
BatchSource = Iterable[Batch] | Callable[[], Iterable[Batch]]
"""Re-iterable batches (e.g. a list), a callable returning a fresh iterable per pass over the
data, or a one-shot iterator (then training stops when it is exhausted)."""


@dataclass(frozen=True)
class TrainingReport:
    """What a training run achieved, measured on the held-out batches."""

    fvu: float
    """Fraction of variance unexplained: sum ||y - y_hat||^2 / sum ||y - mean(y)||^2."""
    mean_l0: float
    """Mean number of active features per token."""
    dead_share: float
    """Share of features never active on the held-out tokens (an upper bound on truly dead)."""
    steps: int
    """Optimizer steps taken."""
    final_loss: float
    """Training loss (MSE + current L1 term, in the training scale) of the last step."""
    final_mse: float
    """Training MSE (in the training scale) of the last step."""
    n_train_tokens: int
    """Token pairs seen in training (counting repeats over passes)."""
    n_held_out_tokens: int
    """Token pairs in the held-out set."""
    seconds: float
    """Wall-clock training time."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@torch.no_grad()
def evaluate_transcoder(transcoder: Transcoder, batches: Iterable[Batch]) -> dict[str, float]:
    """Reconstruction and sparsity of ``transcoder`` on ``(x, y)`` batches.

    Returns ``fvu``, ``mse`` (mean over tokens of ``||y - y_hat||^2``), ``mean_l0``,
    ``dead_share`` (features never active on these tokens) and ``n_tokens``.
    """
    n_tokens = 0
    sse = 0.0
    sum_y = torch.zeros(transcoder.d_model, dtype=torch.float64)
    sum_y_sq = 0.0
    active_count = 0
    ever_active = torch.zeros(transcoder.d_transcoder, dtype=torch.bool)
    for x, y in _validated(batches, transcoder.d_model, "evaluation batches"):
        activations = transcoder.encode(x)  # (n, d_transcoder)
        y_hat = transcoder.decode(activations, x if transcoder.skip else None)  # (n, d_model)
        y = y.to(device=y_hat.device, dtype=y_hat.dtype)
        sse += float((y - y_hat).double().pow(2).sum())
        sum_y += y.double().sum(dim=0).cpu()
        sum_y_sq += float(y.double().pow(2).sum())
        active = activations > 0
        active_count += int(active.sum())
        ever_active |= active.any(dim=0).cpu()
        n_tokens += x.shape[0]
    if n_tokens == 0:
        raise InputError("evaluation batches are empty")
    total_variance = sum_y_sq - float(sum_y.pow(2).sum()) / n_tokens
    return {
        "fvu": sse / total_variance if total_variance > 0 else math.nan,
        "mse": sse / n_tokens,
        "mean_l0": active_count / n_tokens,
        "dead_share": 1.0 - float(ever_active.float().mean()),
        "n_tokens": float(n_tokens),
    }


def train_transcoder(
    batches: BatchSource,
    *,
    d_model: int,
    d_transcoder: int,
    activation: Literal["relu", "topk"] = "relu",
    top_k: int | None = None,
    l1_coefficient: float,
    learning_rate: float,
    steps: int,
    seed: int,
    batch_size: int = 4096,
    held_out: Iterable[Batch] | None = None,
    held_out_tokens: int = 4096,
    center_input: bool = False,
    skip: bool = False,
    layer: int = 0,
    input_hook: InputHook = "mlp_in",
    output_hook: OutputHook = "mlp_out",
    l1_warmup_fraction: float = 0.05,
    lr_decay_fraction: float = 0.2,
    encoder_init_scale: float = 0.1,
    log_every: int = 100,
    device: torch.device | str = "cpu",
) -> tuple[Transcoder, TrainingReport]:
    """Train a transcoder on ``(x, y)`` = (MLP input, MLP output) pairs.

    Args:
        batches: the training pairs; every chunk is shuffled (seeded) and cut into minibatches of
            ``batch_size`` rows (minibatches never span chunks). Passes over the data repeat
            until ``steps`` steps are done, when the source can be iterated again.
        d_model, d_transcoder: widths; each chunk's last dimension must be ``d_model``.
        activation: ``relu`` (with the L1 penalty) or ``topk`` (usually ``l1_coefficient=0``).
        top_k: features kept per token for ``topk``.
        l1_coefficient: weight of the sparsity penalty (in the normalised training scale).
        learning_rate: Adam's learning rate.
        steps: optimizer steps.
        seed: seeds parameter init and batch order.
        held_out: pairs to measure the report on. When not given, the first ``held_out_tokens``
            rows of the data are held out and skipped on every pass (so a callable source must
            produce the same data in the same order each time).
        center_input, skip, layer, input_hook, output_hook: the transcoder's config.
        l1_warmup_fraction, lr_decay_fraction: schedule shapes (fractions of ``steps``).
        encoder_init_scale: ``W_enc`` starts as ``encoder_init_scale * W_dec.T``; small values
            keep the initial output (about half the features active) from swamping the loss.
        log_every: log progress every this many steps (``logging`` at INFO).
        device: where to train.

    Returns:
        The trained transcoder (float32, working on raw activations) and its report.
    """
    _check_training_args(
        activation=activation,
        l1_coefficient=l1_coefficient,
        learning_rate=learning_rate,
        steps=steps,
        batch_size=batch_size,
        held_out_tokens=held_out_tokens,
        l1_warmup_fraction=l1_warmup_fraction,
        lr_decay_fraction=lr_decay_fraction,
    )
    generator = torch.Generator().manual_seed(seed)
    if held_out is not None:
        held_out_set = [(x, y) for x, y in _validated(held_out, d_model, "held_out")]
        n_held_out = sum(x.shape[0] for x, _ in held_out_set)
        chunks = _training_chunks(batches, d_model)
    else:
        held_out_set, n_held_out, chunks = _hold_out(batches, d_model, held_out_tokens)
    if n_held_out == 0:
        raise InputError("the held-out set is empty; pass held_out or held_out_tokens > 0")
    minibatches = _minibatches(chunks, batch_size, generator)

    first = next(minibatches, None)
    if first is None:
        raise InputError("no training rows are left after holding out the evaluation rows")
    x0, y0 = (t.to(device=device, dtype=torch.float32) for t in first)
    scale_x = _rms_scale(x0)
    scale_y = _rms_scale(y0)

    with torch.random.fork_rng(devices=[]):  # the constructor's init must not move the global RNG
        transcoder = Transcoder(
            d_model,
            d_transcoder,
            activation=activation,
            top_k=top_k,
            center_input=center_input,
            skip=skip,
            layer=layer,
            input_hook=input_hook,
            output_hook=output_hook,
        ).to(device)
    _initialise(transcoder, x0 / scale_x, y0 / scale_y, generator, encoder_init_scale)

    optimizer = torch.optim.Adam(transcoder.parameters(), lr=learning_rate)
    decay_start = int(steps * (1.0 - lr_decay_fraction))
    l1_warmup_steps = max(1, int(steps * l1_warmup_fraction))

    start_time = time.perf_counter()
    progress = Progress("training", steps, unit="steps", logger=logger)
    n_train_tokens = 0
    loss_value = mse_value = math.nan
    step = 0
    batch: Batch | None = first
    while step < steps:
        if batch is None:
            batch = next(minibatches, None)
            if batch is None:
                logger.warning("training data exhausted after %d of %d steps", step, steps)
                break
        x = batch[0].to(device=device, dtype=torch.float32) / scale_x  # (n, d_model)
        y = batch[1].to(device=device, dtype=torch.float32) / scale_y  # (n, d_model)
        batch = None

        lr = learning_rate
        if step >= decay_start:
            lr *= (steps - step) / max(1, steps - decay_start)
        for group in optimizer.param_groups:
            group["lr"] = lr
        l1_weight = l1_coefficient * min(1.0, (step + 1) / l1_warmup_steps)

        activations = transcoder.encode(x)  # (n, d_transcoder)
        y_hat = transcoder.decode(activations, x if skip else None)  # (n, d_model)
        mse = (y_hat - y).pow(2).sum(dim=-1).mean()
        l1 = (activations * transcoder.W_dec.norm(dim=1)).sum(dim=-1).mean()
        loss = mse + l1_weight * l1
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        _remove_parallel_decoder_gradient(transcoder)
        optimizer.step()
        _normalise_decoder_rows(transcoder)

        step += 1
        n_train_tokens += x.shape[0]
        loss_value, mse_value = float(loss.detach()), float(mse.detach())
        progress.update(1, tokens=x.shape[0])
        if log_every > 0 and (step % log_every == 0 or step == steps):
            l0 = float((activations > 0).float().sum(dim=-1).mean())
            logger.info(
                "step %d/%d loss %.4f mse %.4f l1 %.3f l0 %.1f lr %.2e (%.1f s)",
                step,
                steps,
                loss_value,
                mse_value,
                float(l1.detach()),
                l0,
                lr,
                time.perf_counter() - start_time,
            )
    progress.close()
    if step == 0:
        raise InputError("training took no steps")
    seconds = time.perf_counter() - start_time

    _fold_scales(transcoder, scale_x, scale_y)
    transcoder.eval()
    metrics = evaluate_transcoder(transcoder, held_out_set)
    report = TrainingReport(
        fvu=metrics["fvu"],
        mean_l0=metrics["mean_l0"],
        dead_share=metrics["dead_share"],
        steps=step,
        final_loss=loss_value,
        final_mse=mse_value,
        n_train_tokens=n_train_tokens,
        n_held_out_tokens=n_held_out,
        seconds=seconds,
    )
    logger.info(
        "trained transcoder: FVU %.4f, L0 %.1f, dead %.1f%% (%d steps, %.1f s)",
        report.fvu,
        report.mean_l0,
        100 * report.dead_share,
        report.steps,
        report.seconds,
    )
    return transcoder, report


# --- data plumbing -------------------------------------------------------------------------------


def _validated(batches: Iterable[Batch], d_model: int, name: str) -> Iterator[Batch]:
    """Yield ``(x, y)`` flattened to (n, d_model), checking shapes."""
    for index, pair in enumerate(batches):
        if not (isinstance(pair, tuple | list) and len(pair) == 2):
            raise InputError(f"{name}: item {index} is not an (x, y) pair")
        x, y = pair
        if not (isinstance(x, Tensor) and isinstance(y, Tensor)):
            raise InputError(f"{name}: item {index} does not hold two tensors")
        if x.shape[-1] != d_model or y.shape[-1] != d_model:
            raise InputError(
                f"{name}: item {index} has last dimensions {x.shape[-1]} and {y.shape[-1]}, "
                f"expected d_model={d_model}"
            )
        x = x.reshape(-1, d_model)
        y = y.reshape(-1, d_model)
        if x.shape[0] != y.shape[0]:
            raise InputError(
                f"{name}: item {index} has {x.shape[0]} inputs but {y.shape[0]} outputs"
            )
        if x.shape[0] > 0:
            yield x, y


def _passes(source: BatchSource) -> Iterator[Iterable[Batch]]:
    """One iterable per pass over the data: forever, except for one-shot iterators."""
    if callable(source):
        while True:
            yield source()
    elif iter(source) is source:
        yield source
    else:
        while True:
            yield source


def _skip_rows(chunks: Iterator[Batch], n_rows: int) -> Iterator[Batch]:
    skipped = 0
    for x, y in chunks:
        if skipped < n_rows:
            drop = min(n_rows - skipped, x.shape[0])
            skipped += drop
            x, y = x[drop:], y[drop:]
            if x.shape[0] == 0:
                continue
        yield x, y


def _training_chunks(source: BatchSource, d_model: int) -> Iterator[Batch]:
    """Training chunks from every pass; stops when a pass yields no rows (exhausted source)."""
    for batch_pass in _passes(source):
        n_rows = 0
        for x, y in _validated(batch_pass, d_model, "batches"):
            n_rows += x.shape[0]
            yield x, y
        if n_rows == 0:
            return


def _hold_out(
    source: BatchSource, d_model: int, n_rows: int
) -> tuple[list[Batch], int, Iterator[Batch]]:
    """Split the first ``n_rows`` rows of the first pass off as the held-out set."""
    passes = _passes(source)
    first_pass = _validated(next(passes), d_model, "batches")
    held: list[Batch] = []
    n_held = 0
    remainder: list[Batch] = []
    for x, y in first_pass:
        take = min(n_rows - n_held, x.shape[0])
        if take > 0:
            held.append((x[:take], y[:take]))
            n_held += take
        if take < x.shape[0]:
            remainder.append((x[take:], y[take:]))
            break

    def chunks() -> Iterator[Batch]:
        yield from itertools.chain(remainder, first_pass)
        for batch_pass in passes:
            n_pass = 0
            for x, y in _skip_rows(_validated(batch_pass, d_model, "batches"), n_held):
                n_pass += x.shape[0]
                yield x, y
            if n_pass == 0:
                return

    return held, n_held, chunks()


def _minibatches(
    chunks: Iterator[Batch], batch_size: int, generator: torch.Generator
) -> Iterator[Batch]:
    """Each chunk shuffled with ``generator`` and cut into minibatches of ``batch_size`` rows."""
    for x, y in chunks:
        order = torch.randperm(x.shape[0], generator=generator)
        for start in range(0, x.shape[0], batch_size):
            rows = order[start : start + batch_size].to(x.device)
            yield x[rows], y[rows]


# --- the model side ------------------------------------------------------------------------------


def _rms_scale(t: Tensor) -> float:
    """``sqrt(E||t - mean(t)||^2 / d)``: dividing by it gives ``E||t - mean(t)||^2 = d``."""
    scale = float((t - t.mean(dim=0)).pow(2).sum(dim=-1).mean().div(t.shape[-1]).sqrt())
    return scale if scale > 0 and math.isfinite(scale) else 1.0


@torch.no_grad()
def _initialise(
    transcoder: Transcoder,
    x: Tensor,
    y: Tensor,
    generator: torch.Generator,
    encoder_init_scale: float,
) -> None:
    """Seeded init from (normalised) sample data ``x``, ``y``: (n, d_model) each."""
    W_dec = torch.randn(transcoder.d_transcoder, transcoder.d_model, generator=generator)
    W_dec /= W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
    transcoder.W_dec.copy_(W_dec)
    transcoder.W_enc.copy_(W_dec.T * encoder_init_scale)
    transcoder.b_dec_out.copy_(y.mean(dim=0))
    if transcoder.b_dec_in is not None:
        transcoder.b_dec_in.copy_(x.mean(dim=0))
        transcoder.b_enc.zero_()
    else:  # centre the pre-activations instead, so that no feature starts dead
        transcoder.b_enc.copy_(-(x.mean(dim=0) @ transcoder.W_enc))
    if transcoder.W_skip is not None:
        transcoder.W_skip.zero_()


@torch.no_grad()
def _remove_parallel_decoder_gradient(transcoder: Transcoder) -> None:
    grad = transcoder.W_dec.grad
    if grad is None:
        return
    rows = transcoder.W_dec  # (d_transcoder, d_model), unit rows
    parallel = (grad * rows).sum(dim=1, keepdim=True)  # (d_transcoder, 1)
    grad -= parallel * rows


@torch.no_grad()
def _normalise_decoder_rows(transcoder: Transcoder) -> None:
    W_dec: torch.Tensor = transcoder.W_dec  # (d_transcoder, d_model), a parameter
    W_dec /= W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)


@torch.no_grad()
def _fold_scales(transcoder: Transcoder, scale_x: float, scale_y: float) -> None:
    """Make the transcoder trained on ``x / scale_x -> y / scale_y`` work on raw ``x -> y``."""
    tc: Any = transcoder  # parameters updated in place (nn.Module attribute types are loose)
    tc.W_enc /= scale_x
    if tc.b_dec_in is not None:
        tc.b_dec_in *= scale_x
    tc.W_dec *= scale_y
    tc.b_dec_out *= scale_y
    if tc.W_skip is not None:
        tc.W_skip *= scale_y / scale_x


def _check_training_args(
    *,
    activation: str,
    l1_coefficient: float,
    learning_rate: float,
    steps: int,
    batch_size: int,
    held_out_tokens: int,
    l1_warmup_fraction: float,
    lr_decay_fraction: float,
) -> None:
    if activation not in ("relu", "topk"):
        raise InputError(
            f"activation {activation!r} cannot be trained here; use 'relu' or 'topk' "
            "(JumpReLU needs a straight-through estimator this trainer does not implement)"
        )
    if l1_coefficient < 0:
        raise InputError(f"l1_coefficient must be >= 0, got {l1_coefficient}")
    if learning_rate <= 0:
        raise InputError(f"learning_rate must be positive, got {learning_rate}")
    if steps <= 0:
        raise InputError(f"steps must be positive, got {steps}")
    if batch_size <= 0:
        raise InputError(f"batch_size must be positive, got {batch_size}")
    if held_out_tokens < 0:
        raise InputError(f"held_out_tokens must be >= 0, got {held_out_tokens}")
    for name, value in (
        ("l1_warmup_fraction", l1_warmup_fraction),
        ("lr_decay_fraction", lr_decay_fraction),
    ):
        if not 0.0 <= value <= 1.0:
            raise InputError(f"{name} must be in [0, 1], got {value}")


# --- the clean next-token loss, computed once per model ----------------------------------------


def tokens_digest(tokens: np.ndarray) -> str:
    """SHA-256 of a token matrix (shape and int64 values), naming the exact tokens a loss is of."""
    array = np.ascontiguousarray(np.asarray(tokens, dtype=np.int64))
    digest = hashlib.sha256(str(array.shape).encode())
    digest.update(array.tobytes())
    return digest.hexdigest()


def clean_loss_record(loss: float, model_name: str, tokens: np.ndarray) -> dict[str, Any]:
    """The JSON record of a model's clean next-token loss over ``tokens`` (n_contexts, pos)."""
    if not math.isfinite(float(loss)):
        raise InputError(f"clean next-token loss of model {model_name!r} is not finite: {loss}")
    return {
        "model": model_name,
        "loss_clean": float(loss),
        "n_contexts": int(tokens.shape[0]),
        "context_length": int(tokens.shape[1]),
        "tokens_sha256": tokens_digest(tokens),
    }


def read_clean_loss(path: str | os.PathLike[str], model_name: str, tokens: np.ndarray) -> float:
    """The clean loss stored at ``path`` by :func:`clean_loss_record`, checked to be the loss of
    ``model_name`` over exactly ``tokens``; an :class:`InputError` naming the file otherwise."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise InputError(f"clean loss file {path}: cannot be read ({error})") from error
    missing = {"model", "loss_clean", "tokens_sha256"} - set(record)
    if missing:
        raise InputError(f"clean loss file {path}: lacks {sorted(missing)}")
    if record["model"] != model_name:
        raise InputError(
            f"clean loss file {path} is of model {record['model']!r}, not {model_name!r}"
        )
    if record["tokens_sha256"] != tokens_digest(tokens):
        raise InputError(
            f"clean loss file {path} was computed on other tokens than the {len(tokens)} "
            "held-out contexts given (rerun the clean_loss rule)"
        )
    return float(record["loss_clean"])
