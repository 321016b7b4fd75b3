"""Vocabulary projection of neurons (paper Table 5): a neuron's value vector through the unembedding."""

from __future__ import annotations

import pandas as pd
import torch

from qrcore.editing.scaling import check_neurons
from qrcore.model.spec import LoadedModel, unembedding
from qrcore.model.tokens import token_texts


def project_neurons(
    lm: LoadedModel, neurons: list[tuple[int, int]], k: int = 8, batch: int = 1024, largest: bool = True
) -> pd.DataFrame:
    """Top-k tokens of each neuron's value vector (a column of the down projection) times the unembedding.

    Returns columns layer, neuron, tokens (list of k token texts, `token_texts`, best first), in the order given. With
    largest=False, the bottom k (the tokens the neuron pushes down most, lowest first).
    """
    check_neurons(lm, neurons)
    sites = lm.sites
    unembed = unembedding(lm.model)  # (vocab, hidden)
    rows = []
    with torch.no_grad():
        for start in range(0, len(neurons), batch):
            part = neurons[start : start + batch]
            values = torch.stack([sites[l].value_vectors()[n] for l, n in part])  # (batch, hidden)
            top = (values.to(unembed.dtype) @ unembed.T).topk(k, dim=-1, largest=largest).indices.cpu()  # (batch, k)
            for (l, n), ids in zip(part, top.tolist()):
                rows.append((l, n, token_texts(lm.tokenizer, ids)))
    return pd.DataFrame(rows, columns=["layer", "neuron", "tokens"])
