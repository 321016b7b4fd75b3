"""Fig. 5 heatmaps for the explorer: wide FFN maps max-pooled into at most a few hundred columns, as plotly figures.

A browser cannot draw 32 x 11008 cells quickly, so each row is cut into equal bins of neighbouring neurons and
each bin shows its strongest neuron (largest |score|, sign kept), whose index the hover names.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import numpy as np
import plotly.graph_objects as go

from qrcore.selection.analysis import relative_depth

MAX_COLS = 512
"""Default column limit of a drawn heatmap."""
COLORSCALE = "RdBu_r"
"""Diverging: NAICA can be negative (negative NA, or ICA < 0 for a neuron in every cluster)."""


class Binned(NamedTuple):
    """A (layers, neurons) map pooled into (layers, bins)."""

    values: np.ndarray
    """(layers, bins) float: each bin's score of largest magnitude, sign kept."""
    edges: np.ndarray
    """(bins + 1,) int: bin b covers neurons edges[b] .. edges[b + 1] - 1."""
    top: np.ndarray
    """(layers, bins) int: the neuron whose score each bin shows."""


def bin_heatmap(matrix: np.ndarray, max_cols: int = MAX_COLS) -> Binned:
    """Max-pool |score| over runs of neighbouring neurons so that at most `max_cols` columns remain."""
    n_layers, n = matrix.shape
    width = max(1, -(-n // max_cols))  # ceil
    bins = -(-n // width)
    padded = np.zeros((n_layers, bins * width), dtype=matrix.dtype)  # (layers, bins * width)
    padded[:, :n] = matrix
    blocks = padded.reshape(n_layers, bins, width)  # (layers, bins, width)
    pick = np.abs(blocks).argmax(axis=-1)  # (layers, bins), first neuron on ties, so never a padding cell
    values = np.take_along_axis(blocks, pick[..., None], axis=-1)[..., 0]  # (layers, bins)
    edges = np.minimum(np.arange(bins + 1) * width, n)  # (bins + 1,)
    return Binned(values, edges, edges[:-1][None, :] + pick)


def color_limit(maps: list[np.ndarray], percentile: float = 95.0) -> float:
    """A shared colour range: the given percentile of the non-zero |scores|, so a few outliers do not wash out the rest.

    Heatmaps of QR neurons are sparse and heavy-tailed; cells above the limit show the end colour, hover the value.
    """
    values = np.abs(np.concatenate([m[m != 0] for m in maps]))  # (non-zero cells,)
    return float(np.percentile(values, percentile)) if values.size else 1.0


def clipped(maps: list[np.ndarray], zmax: float) -> float | None:
    """The largest |score| of the maps when it is beyond the colour range ±zmax (cells that show the end colour)."""
    top = max(float(np.abs(m).max(initial=0.0)) for m in maps)
    return top if top > zmax else None


def colorbar_title(zmax: float, top: float | None) -> str:
    """The colour bar's title: NAICA, and where the colours stop when some cells go beyond."""
    return "NAICA" if top is None else f"NAICA<br>clipped at ±{zmax:.3g}<br>(cells up to {top:.3g})"


def heatmap_figure(
    binned: Binned,
    first_layer: int = 0,
    title: str = "",
    zmax: float | None = None,
    labels: Mapping[tuple[int, int], str] | None = None,
    height: int = 420,
    depth_of: int | None = None,
) -> go.Figure:
    """A plotly heatmap of `binned` (rows from `first_layer` up) whose hover names layer, neuron, score and label.

    `labels` maps (layer, neuron) to text such as the neuron's top vocabulary tokens; `zmax` fixes the colour range
    (shared by side-by-side maps), else `color_limit` of this map; the colour bar says when cells go beyond it. `depth_of`, the model's number of layers, puts
    rows at their relative depth (0 first layer, 1 last), so that models of different depth line up.
    """
    layers = np.arange(first_layer, first_layer + binned.values.shape[0])  # (layers,)
    rows = layers if depth_of is None else relative_depth(depth_of)[layers]  # (layers,)
    labels = labels or {}
    text = np.array(
        [[labels.get((int(l), int(n)), "") for n in row] for l, row in zip(layers, binned.top)], dtype=object
    )  # (layers, bins)
    layer_of = np.broadcast_to(layers[:, None], binned.top.shape).astype(object)  # (layers, bins)
    custom = np.stack([binned.top.astype(object), text, layer_of], axis=-1)  # (layers, bins, 3)
    if zmax is None:
        zmax = color_limit([binned.values])
    title_text = colorbar_title(zmax, clipped([binned.values], zmax))
    fig = go.Figure(
        go.Heatmap(
            z=binned.values,
            x=binned.edges[:-1],
            y=rows,
            customdata=custom,
            colorscale=COLORSCALE,
            zmid=0.0,
            zmin=-zmax,
            zmax=zmax,
            colorbar={"title": {"text": title_text}, "thickness": 12},
            hovertemplate="layer %{customdata[2]}<br>neuron %{customdata[0]}<br>score %{z:.4g}<br>%{customdata[1]}"
            "<extra></extra>",
        )
    )
    fig.update_layout(
        title=title,
        height=height,
        margin={"l": 50, "r": 10, "t": 40 if title else 10, "b": 40},
        xaxis_title="neuron",
        yaxis_title="layer" if depth_of is None else "relative depth",
    )
    if depth_of is None:
        fig.update_yaxes(dtick=-(-len(layers) // 16), tickformat="d")
    else:
        fig.update_yaxes(dtick=0.1, tickformat=".1f")
    half_row = np.diff(rows).min() / 2 if len(rows) > 1 else 0.5
    return fig.update_yaxes(range=[rows[0] - half_row, rows[-1] + half_row])  # the rows only, whatever else is drawn
