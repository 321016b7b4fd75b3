"""`qrn data stats`: how often the model picks the right letter, per group (mean over templates)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from qrcore.attribution.ig import NeuronAttribution
from qrcore.data.prompts import fill_distractors
from qrcore.data.queries import Query
from qrcore.editing.scaling import correct_probs, letter_probs
from qrcore.model.spec import LoadedModel
from qrcore.settings import PromptSettings


def dataset_accuracy(lm: LoadedModel, queries: list[Query], seed: int = 0) -> pd.DataFrame:
    """Per group: queries, accuracy (argmax letter is correct) and mean correct-letter probability."""
    attr = NeuronAttribution(lm, prompt_settings=PromptSettings(seed=seed))
    rows = []
    for q in fill_distractors(queries, seed=seed):
        prompts = attr.prompts(q)
        probs = letter_probs(lm, prompts)  # (templates, options)
        right = [float(np.nanargmax(p) == c.correct) for p, c in zip(probs, prompts)]
        rows.append((q.group, np.mean(right), correct_probs(probs, prompts).mean()))
    frame = pd.DataFrame(rows, columns=["group", "accuracy", "correct_prob"])
    table = (
        frame.groupby("group", sort=False)
        .agg(queries=("accuracy", "size"), accuracy=("accuracy", "mean"), correct_prob=("correct_prob", "mean"))
        .reset_index()
    )
    return table
