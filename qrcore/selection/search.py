"""Searching a run's neurons (issue 27): by vocabulary token, which FFN neurons' value vectors push a token up (the
projection of Table 5 read the other way round), and by question text, which of a run's queries match.

torch is imported by the functions that need the model, so that the explorer reads question matches without it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from qrcore.data.queries import Query
from qrcore.errors import QRNError
from qrcore.model.tokens import token_texts
from qrcore.selection.topk import top_neurons

if TYPE_CHECKING:
    from qrcore.model.spec import LoadedModel

TOKEN_COLUMNS = ["rank", "layer", "neuron", "score"]


def first_token(lm: LoadedModel, text: str) -> tuple[int, str]:
    """The id and text of the first token of `text` (the token a model's answer starts with); QRNError for none."""
    ids = lm.tokenizer.encode(text, add_special_tokens=False)
    if not text.strip() or not ids:
        raise QRNError("type a word to search for, e.g. ' Paris' (a leading space is part of most tokens).")
    return ids[0], token_texts(lm.tokenizer, ids[:1])[0]


def token_scores(lm: LoadedModel, token_id: int) -> np.ndarray:
    """(layers, neurons): each FFN neuron's value vector dotted with the token's unembedding row."""
    import torch

    from qrcore.model.spec import unembedding

    unembed = unembedding(lm.model)[token_id]  # (hidden,)
    with torch.no_grad():
        rows = [site.value_vectors().to(unembed.dtype) @ unembed for site in lm.sites]  # (neurons,) each
    return torch.stack(rows).float().cpu().numpy()


def neurons_for_token(lm: LoadedModel, token_id: int, k: int = 50) -> pd.DataFrame:
    """The k neurons that push the token up most (TOKEN_COLUMNS, best first): their value-vector projection on it."""
    top = top_neurons(token_scores(lm, token_id), k)
    return pd.DataFrame([(i + 1, *row) for i, row in enumerate(top)], columns=TOKEN_COLUMNS)


def matching_queries(queries: Iterable[Query], text: str) -> list[Query]:
    """The queries whose id, group, question or answer holds every word of `text` (case ignored), in order."""
    words = text.casefold().split()
    return [
        q for q in queries if words and all(w in f"{q.id} {q.group} {q.question} {q.answer}".casefold() for w in words)
    ]
