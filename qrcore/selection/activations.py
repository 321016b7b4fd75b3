"""What makes a neuron fire: the run's queries ranked by a neuron's activation f at the answer position (the FFN
up-projection output that NA attributes, Sec. 4.2, mean over the query's templates), kept for every neuron of a run
in one forward per prompt, and one neuron's f on every token of a text."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from qrcore.data.queries import Query
from qrcore.errors import QRNError
from qrcore.progress import Progress
from qrcore.selection.card import check_neuron
from qrcore.settings import RunSettings

if TYPE_CHECKING:
    import torch

    from qrcore.model.spec import LoadedModel

TOP_QUERIES = 10
"""Queries kept per neuron: its highest activations at the answer position."""
MAX_TOKENS = 512
"""The longest text whose per-token activations are shown."""
TOP_COLUMNS = ["layer", "neuron", "query_id", "activation"]


def answer_activations(
    lm: LoadedModel, queries: Sequence[Query], settings: RunSettings, progress: Progress | None = None
) -> Iterator[np.ndarray]:
    """Per query, (layers, neurons) float32 activation f at the answer position, mean over its templates.

    The prompts are the run's (its prompt settings); one unedited forward per prompt (`ig.answer_activation`).
    """
    from qrcore.attribution.ig import NeuronAttribution, answer_activation

    attr = NeuronAttribution(lm, settings.attribution, settings.prompt)
    for i, query in enumerate(queries):
        yield answer_activation(lm, attr, attr.prompts(query)).astype(np.float32)
        if progress:
            progress(i + 1, len(queries), query.id)


@dataclass
class TopQueries:
    """Every neuron's k highest activations at the answer position over the queries added so far (unordered)."""

    values: np.ndarray
    """float32 (k, layers, neurons); -inf where fewer than k queries were added."""
    slots: np.ndarray
    """int32 (k, layers, neurons): index into `query_ids` of each value; -1 where empty."""
    query_ids: list[str] = field(default_factory=list)
    """The queries added, in order."""

    def __post_init__(self) -> None:
        if self.values.ndim != 3 or self.values.shape != self.slots.shape or self.values.shape[0] < 1:
            raise ValueError(
                f"values {self.values.shape} and slots {self.slots.shape} must both be (k, layers, neurons)"
            )
        if self.slots.max(initial=-1) >= len(self.query_ids):
            raise ValueError(f"a slot points past the {len(self.query_ids)} queries added")

    @classmethod
    def empty(cls, shape: tuple[int, int], k: int = TOP_QUERIES) -> TopQueries:
        """No query added yet, for a model of `shape` (layers, neurons)."""
        if k < 1:
            raise ValueError(f"k is {k}; keep at least one query per neuron")
        return cls(np.full((k, *shape), -np.inf, np.float32), np.full((k, *shape), -1, np.int32))

    def add(self, query_id: str, activation: np.ndarray) -> None:
        """Fold one query's (layers, neurons) activation in: it replaces each neuron's lowest kept value it beats."""
        if activation.shape != self.values.shape[1:]:
            raise ValueError(f"activation {activation.shape} is not (layers, neurons) {self.values.shape[1:]}")
        if query_id in self.query_ids:
            raise ValueError(f"query {query_id!r} was added already")
        lowest = self.values.argmin(axis=0)[None]  # (1, layers, neurons)
        kept = np.take_along_axis(self.values, lowest, axis=0)[0]  # (layers, neurons)
        beats = activation > kept  # (layers, neurons)
        slot = np.where(beats, len(self.query_ids), np.take_along_axis(self.slots, lowest, axis=0)[0])
        np.put_along_axis(self.values, lowest, np.where(beats, activation, kept)[None], axis=0)
        np.put_along_axis(self.slots, lowest, slot[None].astype(np.int32), axis=0)
        self.query_ids.append(query_id)

    def rows(self) -> pd.DataFrame:
        """TOP_COLUMNS rows of every kept (neuron, query), by layer and neuron, highest activation first."""
        k, layers, neurons = self.values.shape
        kept = self.slots >= 0  # (k, layers, neurons)
        _, layer, neuron = np.nonzero(kept)
        frame = pd.DataFrame(
            {
                "layer": layer.astype(np.int16),
                "neuron": neuron.astype(np.int32),
                "query_id": np.asarray(self.query_ids, dtype=object)[self.slots[kept]] if kept.any() else [],
                "activation": self.values[kept].astype(np.float32),
            },
            columns=TOP_COLUMNS,
        )
        return frame.sort_values(
            ["layer", "neuron", "activation", "query_id"], ascending=[True, True, False, True], ignore_index=True
        )

    @classmethod
    def from_rows(cls, rows: pd.DataFrame, query_ids: Sequence[str], shape: tuple[int, int], k: int = TOP_QUERIES):
        """The state that `rows()` wrote after adding `query_ids` (a resumed computation)."""
        top = cls.empty(shape, k)
        top.query_ids = list(query_ids)
        index = {q: i for i, q in enumerate(top.query_ids)}
        rank = rows.groupby(["layer", "neuron"]).cumcount().to_numpy()
        if len(rows) and rank.max() >= k:
            raise ValueError(f"rows keep {rank.max() + 1} queries of a neuron; k is {k}")
        at = (rank, rows["layer"].to_numpy(), rows["neuron"].to_numpy())
        top.values[at] = rows["activation"].to_numpy(np.float32)
        top.slots[at] = [index[q] for q in rows["query_id"]]
        return top


def model_shape(lm: LoadedModel) -> tuple[int, int]:
    """(layers, neurons) of the model's FFN neurons."""
    row = lm.store_row()
    return int(row["n_layers"]), int(row["n_neurons"])


def top_queries(
    lm: LoadedModel,
    queries: Sequence[Query],
    settings: RunSettings,
    k: int = TOP_QUERIES,
    progress: Progress | None = None,
) -> TopQueries:
    """Every neuron's k queries of the highest activation at the answer position, one forward per prompt."""
    top = TopQueries.empty(model_shape(lm), k)
    for query, activation in zip(queries, answer_activations(lm, queries, settings, progress)):
        top.add(query.id, activation)
    return top


@contextmanager
def neuron_trace(model: torch.nn.Module, layer: int, neuron: int) -> Iterator[list[torch.Tensor]]:
    """Within the block, every forward appends the neuron's f at every position, (batch, seq), to the yielded list;
    the hook is removed in `finally` (`forward_hooks`)."""
    from qrcore.model.ffn import ffn_sites
    from qrcore.model.interventions import forward_hooks

    site = ffn_sites(model)[layer]
    seen: list[torch.Tensor] = []

    def record(_module, _inputs, output) -> None:
        seen.append(output[..., site.offset + neuron].detach().float())  # (batch, seq)

    with forward_hooks([(site.module, record)]):
        yield seen


def token_activations(lm: LoadedModel, ids: Sequence[int], layer: int, neuron: int) -> np.ndarray:
    """(tokens,) the neuron's activation f on every token of `ids`, in one unedited forward."""
    import torch

    check_neuron(layer, neuron, *model_shape(lm))
    if not 0 < len(ids) <= MAX_TOKENS:
        raise QRNError(
            f"the text has {len(ids)} tokens; type between 1 and {MAX_TOKENS} tokens of text to see the neuron's "
            "activation on each."
        )
    with torch.no_grad(), neuron_trace(lm.model, layer, neuron) as seen:
        lm.model(torch.tensor([list(ids)], device=lm.device), logits_to_keep=1)
    return seen[0][0].cpu().numpy()  # (tokens,)
