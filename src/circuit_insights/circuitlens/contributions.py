"""Candidate contributions of a batch and the significance filter, on the model's device.

A batch yields hundreds of thousands of candidate contributions (every upstream feature at every
position, every head and source, ...). They stay on the device as :class:`ContributionGroup`
tensors; :func:`select_significant` computes the exact per-row totals over *all* of them and keeps
the significant ones, and only those are moved to the host and turned into rows
(:func:`contribution_frame`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import Tensor

LEAF_KINDS: tuple[str, ...] = ("embedding", "feature", "error", "mlp_error", "bias")
KINDS: tuple[str, ...] = (*LEAF_KINDS, "head", "logit", "top_token")
PARTITION_OF_KIND: dict[str, str] = {
    **{kind: "leaf" for kind in LEAF_KINDS},
    "head": "mediator",
    "logit": "output",
    "top_token": "output_vocab",
}
#: Partitions filtered by significance (output rows are always kept).
FILTERED_PARTITIONS: tuple[str, ...] = ("leaf", "mediator")
MISSING = np.iinfo(np.int64).min
_META = ("row", "kind", "layer", "head", "source_feature", "position", "token", "detail")


@dataclass
class ContributionGroup:
    """Candidate contributions of one kind; tensors (n,) on the device, one entry per contributor.

    ``row`` is the local row (request) in the batch; ``layer`` / ``detail`` are shared by the
    group; ``share`` is given only where it is not a share of the partition (top tokens).
    """

    kind: str
    row: Tensor
    value: Tensor
    layer: int | None = None
    head: Tensor | None = None
    source_feature: Tensor | None = None
    position: Tensor | None = None
    token: Tensor | None = None
    detail: str | None = None
    share: Tensor | None = None

    @property
    def partition(self) -> str:
        return PARTITION_OF_KIND[self.kind]

    def __len__(self) -> int:
        return int(self.row.shape[0])


@dataclass
class Selection:
    """The kept entries of each group (indices into the group) and their shares."""

    groups: list[ContributionGroup]
    keep: list[Tensor]  # per group: (n_kept,) long
    share: list[Tensor]  # per group: (n_kept,) float64


def top_per_row(rows: Tensor, magnitude: Tensor, n_rows: int, k: int) -> Tensor:
    """Mask of the ``k`` largest ``magnitude`` entries of each row (ties: the earlier entry)."""
    top = torch.zeros(len(rows), dtype=torch.bool, device=rows.device)
    if k == 0 or len(rows) == 0:
        return top
    # A lower bound of each row's k-th largest value: the smallest of the maxima of k disjoint
    # subsets (k distinct entries). Only entries at or above it can be in the top k.
    index = torch.arange(len(rows), device=rows.device)
    slots = torch.full((n_rows * k,), -torch.inf, dtype=magnitude.dtype, device=rows.device)
    slots.scatter_reduce_(0, rows * k + index % k, magnitude, reduce="amax")
    bound = slots.view(n_rows, k).min(dim=1).values  # (n_rows,)
    candidates = (magnitude >= bound[rows]).nonzero().squeeze(1)
    rows_c, magnitude_c = rows[candidates], magnitude[candidates]
    order = torch.argsort(magnitude_c, descending=True, stable=True)
    order = order[torch.argsort(rows_c[order], stable=True)]
    counts = torch.bincount(rows_c, minlength=n_rows)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(len(candidates), device=rows.device) - starts[rows_c[order]]
    top[candidates[order[rank < k]]] = True
    return top


def select_significant(
    groups: Sequence[ContributionGroup], n_rows: int, *, threshold: float, keep_top: int
) -> tuple[Selection, dict[str, np.ndarray]]:
    """Keep, per row and filtered partition, the entries with ``|value| / sum |values| >=
    threshold`` plus the ``keep_top`` largest; output entries are all kept.

    Returns the selection and the exact per-row totals (numpy, one entry per row):
    ``{leaf,head}_sum``, ``{leaf,head}_abs_sum``, ``n_{leaves,heads}``, ``n_*_kept``,
    ``kept_*_sum``, ``n_*_dropped``, ``dropped_*_sum``.
    """
    groups = [group for group in groups if len(group)]
    keep: list[Tensor | None] = [None] * len(groups)
    share: list[Tensor | None] = [None] * len(groups)
    stats: dict[str, np.ndarray] = {}
    for partition in (*FILTERED_PARTITIONS, "output"):
        members = [i for i, group in enumerate(groups) if group.partition == partition]
        prefix, plural = ("leaf", "leaves") if partition == "leaf" else ("head", "heads")
        if not members:
            if partition != "output":
                zeros = np.zeros(n_rows)
                stats.update(
                    {
                        f"{prefix}_sum": zeros,
                        f"{prefix}_abs_sum": zeros,
                        f"n_{plural}": zeros.astype(np.int64),
                        f"n_{plural}_kept": zeros.astype(np.int64),
                        f"kept_{prefix}_sum": zeros,
                        f"n_{plural}_dropped": zeros.astype(np.int64),
                        f"dropped_{prefix}_sum": zeros,
                    }
                )
            continue
        rows = torch.cat([groups[i].row for i in members])
        values = torch.cat([groups[i].value.double() for i in members])
        magnitude = values.abs()
        abs_sum = torch.zeros(n_rows, dtype=torch.float64, device=rows.device)
        abs_sum.index_add_(0, rows, magnitude)
        denominator = abs_sum[rows]
        shares = torch.where(
            denominator > 0, magnitude / denominator.clamp_min(1e-300), torch.zeros_like(magnitude)
        )
        if partition == "output":
            kept = torch.ones_like(rows, dtype=torch.bool)
        else:
            kept = shares >= threshold
            # The top-k of a row with >= k entries above the threshold are above it: only the
            # other rows need ranking.
            short = torch.bincount(rows[kept], minlength=n_rows) < keep_top
            needy = short[rows].nonzero().squeeze(1)
            if len(needy):
                top = top_per_row(rows[needy], magnitude[needy], n_rows, keep_top)
                kept[needy[top]] = True
            total = torch.zeros_like(abs_sum).index_add_(0, rows, values)
            kept_sum = torch.zeros_like(abs_sum).index_add_(0, rows[kept], values[kept])
            count = torch.bincount(rows, minlength=n_rows)
            n_kept = torch.bincount(rows[kept], minlength=n_rows)
            stats.update(
                {
                    f"{prefix}_sum": total.cpu().numpy(),
                    f"{prefix}_abs_sum": abs_sum.cpu().numpy(),
                    f"n_{plural}": count.cpu().numpy(),
                    f"n_{plural}_kept": n_kept.cpu().numpy(),
                    f"kept_{prefix}_sum": kept_sum.cpu().numpy(),
                    f"n_{plural}_dropped": (count - n_kept).cpu().numpy(),
                    f"dropped_{prefix}_sum": (total - kept_sum).cpu().numpy(),
                }
            )
        sizes = [len(groups[i]) for i in members]
        for i, group_keep, group_share in zip(
            members, kept.split(sizes), shares.split(sizes), strict=True
        ):
            index = group_keep.nonzero().squeeze(1)
            keep[i] = index
            given = groups[i].share
            share[i] = (given.double() if given is not None else group_share)[index]
    for i, group in enumerate(groups):  # partitions not handled above (top tokens)
        if keep[i] is None:
            keep[i] = torch.arange(len(group), device=group.row.device)
            share[i] = (
                group.share.double()
                if group.share is not None
                else torch.full((len(group),), float("nan"), dtype=torch.float64)
            )
    return Selection(groups, keep, share), stats  # type: ignore[arg-type]


def contribution_frame(selection: Selection) -> pd.DataFrame:
    """The kept entries as rows (``row`` = local row; nullable integers where not applicable)."""
    details: list[str | None] = [None]
    metas, numbers = [], []
    for group, index, share in zip(selection.groups, selection.keep, selection.share, strict=True):
        if len(index) == 0:
            continue
        if group.detail not in details:
            details.append(group.detail)
        device = group.row.device
        n = len(index)

        def column(values: Tensor | int | None, _index=index, _n=n, _device=device) -> Tensor:
            if values is None:
                return torch.full((_n,), MISSING, dtype=torch.long, device=_device)
            if isinstance(values, int):
                return torch.full((_n,), values, dtype=torch.long, device=_device)
            return values[_index].long()

        metas.append(
            torch.stack(
                [
                    column(group.row),
                    column(KINDS.index(group.kind)),
                    column(group.layer),
                    column(group.head),
                    column(group.source_feature),
                    column(group.position),
                    column(group.token),
                    column(details.index(group.detail)),
                ],
                dim=1,
            )
        )
        numbers.append(torch.stack([group.value[index].double(), share.to(device)], dim=1))
    if not metas:
        meta = np.zeros((0, len(_META)), dtype=np.int64)
        number = np.zeros((0, 2))
    else:
        meta = torch.cat(metas).cpu().numpy()
        number = torch.cat(numbers).cpu().numpy()
    columns = dict(zip(_META, meta.T, strict=True))
    kind = np.array(KINDS, dtype=object)[columns["kind"]]
    return pd.DataFrame(
        {
            "row": columns["row"],
            "kind": kind,
            "partition": np.array([PARTITION_OF_KIND[k] for k in KINDS], dtype=object)[
                columns["kind"]
            ],
            "layer": nullable(columns["layer"]),
            "head": nullable(columns["head"]),
            "source_feature": nullable(columns["source_feature"]),
            "position": nullable(columns["position"]),
            "token": nullable(columns["token"]),
            "detail": np.array(details, dtype=object)[columns["detail"]],
            "value": number[:, 0].astype(np.float32),
            "share": number[:, 1].astype(np.float32),
        }
    )


def nullable(values: np.ndarray) -> pd.arrays.IntegerArray:
    """int32 with nulls where ``values == MISSING``."""
    missing = values == MISSING
    return pd.arrays.IntegerArray(np.where(missing, 0, values).astype(np.int32), mask=missing)
