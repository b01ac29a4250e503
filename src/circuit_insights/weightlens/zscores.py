"""z-scores over a distribution (full or its top k) and the items above a threshold per row."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from circuit_insights.weightlens.config import ZScope


def zscore_stats(
    values: Tensor, *, dim: int = 0, scope: ZScope = "full", top_k: int = 1000
) -> tuple[Tensor, Tensor]:
    """Mean and std (with Bessel's correction) of ``values`` along ``dim`` (reduced away).

    ``scope="top"``: of the ``top_k`` largest values only (all when fewer).
    """
    if scope == "top":
        values = values.topk(min(int(top_k), values.shape[dim]), dim=dim).values
    n = values.shape[dim]
    if n < 2:
        return values.mean(dim), torch.zeros_like(values.mean(dim))
    # One pass of fast reductions (torch's std is several times slower on CPU); the rows where
    # sum(x^2) - n mean^2 loses precision (variance tiny against the mean) are redone exactly.
    mean = values.sum(dim).double() / n
    squares = torch.linalg.vector_norm(values, 2, dim=dim).double().square()
    variance = ((squares - n * mean.square()) / (n - 1)).clamp_min(0.0)
    unstable = variance <= 1e-4 * squares / n
    std = variance.sqrt()
    if bool(unstable.any()):
        std = torch.where(unstable, values.double().std(dim), std)
    return mean.to(values.dtype), std.to(values.dtype)


def zscores(values: Tensor, *, dim: int = 0, scope: ZScope = "full", top_k: int = 1000) -> Tensor:
    """z-scores along ``dim`` with the statistics of :func:`zscore_stats`; 0 where std is 0."""
    mean, std = zscore_stats(values, dim=dim, scope=scope, top_k=top_k)
    return _standardize(values, mean.unsqueeze(dim), std.unsqueeze(dim))


def _standardize(values: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    defined = std > 0
    z = (values - mean).div_(torch.where(defined, std, torch.ones_like(std)))
    return z if bool(defined.all()) else z.mul_(defined)


@dataclass
class Outliers:
    """Items above a z threshold in each row of a (n_rows, n_items) score matrix, flat.

    ``rows``, ``indices``, ``z``, ``values`` (n_kept,): the kept (row, item) pairs, by row, highest
    z first within a row; ``n_total`` (n_rows,): items above the threshold before the cap;
    ``mean``, ``std`` (n_rows,): the z statistics.
    """

    rows: np.ndarray
    indices: np.ndarray
    z: np.ndarray
    values: np.ndarray
    n_total: np.ndarray
    mean: Tensor
    std: Tensor

    def per_row(self, name: str) -> list[np.ndarray]:
        """One array per row of the flat field ``name`` (``indices``, ``z`` or ``values``)."""
        counts = np.bincount(self.rows, minlength=len(self.n_total))
        return np.split(getattr(self, name), np.cumsum(counts)[:-1])


def select_outliers(
    scores: Tensor, threshold: float, *, scope: ZScope, top_k: int, max_keep: int
) -> Outliers:
    """Items with ``z > threshold`` in each row of ``scores`` (n_rows, n_items).

    ``scope="full"`` standardizes by the row's mean and std; ``scope="top"`` by those of the
    row's ``top_k`` largest scores, and only those items can pass. At most ``max_keep`` items
    per row are kept, highest z first. For ``z < -threshold`` pass ``-scores``. A row with std 0
    has z = 0 everywhere.
    """
    n_items = scores.shape[1]
    if scope == "top":
        top_values, top_indices = scores.topk(min(int(top_k), n_items), dim=1)  # (rows, k)
        mean, std = zscore_stats(top_values, dim=1)
        keep = min(int(max_keep), top_values.shape[1])
        z_all = _standardize(top_values, mean[:, None], std[:, None])  # descending per row
        n_total = (z_all > threshold).sum(1)
        z_kept, indices_kept, values_kept = (
            z_all[:, :keep],
            top_indices[:, :keep],
            top_values[:, :keep],
        )
    else:
        mean, std = zscore_stats(scores, dim=1)
        keep = min(int(max_keep), n_items)
        values_kept, indices_kept = scores.topk(keep, dim=1)  # z is monotone in the score
        z_kept = _standardize(values_kept, mean[:, None], std[:, None])
        n_total = (z_kept > threshold).sum(1)
        capped = (n_total == keep) & (keep < n_items)
        if bool(capped.any()):  # count past the cap only where the cap was reached
            # z > t  <=>  score > mean + t * std (std > 0 there, as some z passed).
            bound = (mean + threshold * std)[capped]
            n_total[capped] = (scores[capped] > bound[:, None]).sum(1)
    mask = (z_kept > threshold).cpu().numpy()
    rows = np.nonzero(mask)[0].astype(np.int64)
    return Outliers(
        rows=rows,
        indices=indices_kept.cpu().numpy()[mask].astype(np.int64),
        z=z_kept.double().cpu().numpy()[mask],
        values=values_kept.double().cpu().numpy()[mask],
        n_total=n_total.cpu().numpy().astype(np.int64),
        mean=mean,
        std=std,
    )
