"""Neuron editing (paper Sec. 5): scale chosen FFN neurons' activation f at the answer position and read
the option probabilities or the free-form answer that follow. 0 suppresses, 1 leaves, 2 boosts.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch

from qrcore.attribution.prefixes import PackedPrefix
from qrcore.data.prompts import ChoicePrompt
from qrcore.editing.edits import check_model
from qrcore.errors import QRNError
from qrcore.model.forward import packed_mask
from qrcore.model.interventions import LAST, Scale, scaled
from qrcore.model.spec import LoadedModel
from qrcore.model.tokens import decoded

BOOST, SUPPRESS = 2.0, 0.0
"""The paper's edits: f doubled, f set to zero."""

Edit = Mapping[tuple[int, int], float]
"""(layer, neuron) -> multiplier of f."""


def check_neurons(lm: LoadedModel, neurons: Iterable[tuple[int, int]]) -> None:
    """Raise a one-line QRNError for a layer or neuron index outside the model."""
    sites = lm.sites
    for layer, neuron in neurons:
        if not 0 <= layer < len(sites):
            raise QRNError(f"layer {layer} is out of range; this model has layers 0-{len(sites) - 1}.")
        if not 0 <= neuron < sites[layer].n_neurons:
            raise QRNError(
                f"neuron {neuron} is out of range; layer {layer} has neurons 0-{sites[layer].n_neurons - 1}."
            )


def _scales(lm: LoadedModel, edits: Sequence[Edit], packed: bool) -> list[Scale]:
    """The edits as `Scale`s, each checked against the model: at the last position, or with `packed` edits[r] at
    packed row r."""
    scales = []
    for row, edit in enumerate(edits):
        check_model(edit, lm.fingerprint, lm.spec.name)
        check_neurons(lm, edit)
        position = row if packed else LAST
        scales += [Scale(layer, neuron, float(mult), position) for (layer, neuron), mult in edit.items()]
    return scales


@contextmanager
def edited(lm: LoadedModel, edit: Edit) -> Iterator[None]:
    """Within the block, f of each edited neuron is multiplied at the last position of every forward.

    During generation with a cache each step's input is the last position, so generated tokens are edited too.
    An edit loaded from a file (`qrcore.editing.edits.load_edit`) must have been made for this model.
    """
    with scaled(lm.model, _scales(lm, [edit], packed=False), lm.sites):
        yield


@contextmanager
def edited_rows(lm: LoadedModel, edits: Sequence[Edit]) -> Iterator[None]:
    """Within the block, packed row r of a forward of shape (1, len(edits)) has edits[r] applied to its f."""
    with scaled(lm.model, _scales(lm, edits, packed=True), lm.sites):
        yield


@contextmanager
def one_thread(device: torch.device) -> Iterator[None]:
    """Run torch on one CPU thread inside the block.

    A forward of a few positions is memory-bound; on a busy 2-core machine OpenMP's second thread made it take
    2.6 s instead of 0.12 s (measured on SmolLM2, three packed answer positions). The evaluation's forwards of 78
    positions are faster on all threads (`qrn bench evaluation`), so `letter_probs_under` leaves the count alone.
    """
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def letter_probs(
    lm: LoadedModel, prompts: list[ChoicePrompt], edit: Edit | None = None, cache: PackedPrefix | None = None
) -> np.ndarray:
    """(prompts, options) probability of each option letter token after each prompt, under `edit`; NaN past a
    prompt's own letters when the prompts have different numbers of options (imported ready-made prompts).

    With `cache` (from `prefix_cache`) only the answer positions run, packed into one forward (the same
    4D-mask packing as the attribution's fast path); without it, each whole prompt runs on its own (the oracle of
    the packed path).
    """
    if cache is not None:
        with one_thread(lm.device):
            return letter_probs_under(lm, prompts, cache, [edit or {}])[0]
    with torch.no_grad(), edited(lm, edit or {}):
        rows = [
            lm.model(torch.tensor([p.input_ids], device=lm.device), logits_to_keep=1).logits[0, -1] for p in prompts
        ]  # each (vocab,)
    return pad_rows([row.float().softmax(-1)[list(p.letter_ids)].cpu().numpy() for row, p in zip(rows, prompts)])


def letter_probs_under(
    lm: LoadedModel, prompts: list[ChoicePrompt], cache: PackedPrefix, edits: Sequence[Edit]
) -> np.ndarray:
    """(edits, prompts, options) `letter_probs` of every prompt under every edit, all in one packed forward.

    A forward of a few positions reads every weight once whatever the number of rows, so the evaluation's
    edits of a query cost about as much together as one of them alone.
    """
    from transformers import DynamicCache

    n = len(prompts)
    ids = torch.tensor([[p.input_ids[-1] for p in prompts] * len(edits)], device=lm.device)  # (1, edits * n)
    rows = list(range(n)) * len(edits)  # the prefix each packed row sees
    dtype = cache.kv[0][0].dtype
    with torch.no_grad(), edited_rows(lm, [e for e in edits for _ in prompts]):
        logits = lm.model(
            ids,
            position_ids=torch.tensor([[cache.lengths[r] for r in rows]], device=lm.device),
            attention_mask=packed_mask(lm.model.config, cache.lengths, rows, dtype, lm.device),
            past_key_values=DynamicCache(cache.kv),
            use_cache=True,
        ).logits[0]  # (edits * n, vocab)
    probs = pad_rows(
        [row.float().softmax(-1)[list(p.letter_ids)].cpu().numpy() for row, p in zip(logits, prompts * len(edits))]
    )  # (edits * n, options)
    return probs.reshape(len(edits), n, -1)


def pad_rows(rows: Iterable[np.ndarray]) -> np.ndarray:
    """(rows, widest) float array of 1-D rows of any lengths, NaN past each row's end (take argmax with nanargmax)."""
    rows = list(rows)
    out = np.full((len(rows), max((len(r) for r in rows), default=0)), np.nan, dtype=np.float32)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


def correct_probs(probs: np.ndarray, prompts: list[ChoicePrompt]) -> np.ndarray:
    """(prompts,) probability of each prompt's correct letter, from `letter_probs` output (prompts, options)."""
    return np.array([p[c.correct] for p, c in zip(probs, prompts)])


def question_ids(lm: LoadedModel, question: str) -> torch.Tensor:
    """(1, tokens) the plain question as the model's chat template asks it (as it is, without a template)."""
    tok = lm.tokenizer
    if getattr(tok, "chat_template", None):
        text = tok.apply_chat_template(
            [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
        )
        if not isinstance(text, str):
            raise TypeError(f"{type(tok).__name__}.apply_chat_template gave a {type(text).__name__}, not text")
        ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    else:
        ids = tok(question, return_tensors="pt")["input_ids"]
    return ids.to(lm.device)


def generate(lm: LoadedModel, question: str, edit: Edit | None = None, max_new_tokens: int = 48) -> str:
    """The model's free-form greedy answer to a plain question, under `edit`."""
    tok = lm.tokenizer
    ids = question_ids(lm, question)  # (1, tokens)
    with torch.no_grad(), edited(lm, edit or {}):
        out = lm.model.generate(  # pyright: ignore[reportAttributeAccessIssue]  # GenerationMixin: a lazy import
            ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id or tok.eos_token_id
        )
    return decoded(tok, out[0, ids.shape[1] :].tolist())
