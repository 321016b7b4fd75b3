"""Free-form greedy generation token by token: `generate`'s answer as pieces of text that arrive as they are decoded,
so that a page can show the unedited and the edited answer growing side by side."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from qrcore.editing.scaling import Edit, edited, question_ids
from qrcore.model.spec import LoadedModel
from qrcore.model.tokens import decoded


def stop_tokens(lm: LoadedModel) -> set[int]:
    """The token ids that end a generation: the generation config's end-of-sequence ids, else the tokenizer's."""
    config = lm.model.generation_config
    eos = config.eos_token_id if config is not None and config.eos_token_id is not None else lm.tokenizer.eos_token_id
    ids = eos if isinstance(eos, list) else [eos]
    return {int(i) for i in ids if i is not None}


def stream(lm: LoadedModel, question: str, edit: Edit | None = None, max_new_tokens: int = 48) -> Iterator[str]:
    """Pieces of the greedy answer to a plain question under `edit`, one per decoded token; joined, they are
    `scaling.generate`'s answer (same decoding: greedy, same stop tokens and length).

    Each step's forward runs inside `edited`, whose hooks are removed before the piece is yielded, so two streams can
    be read in turns on one model.
    """
    from transformers import DynamicCache

    tok, stops = lm.tokenizer, stop_tokens(lm)
    step = question_ids(lm, question)  # (1, tokens), then (1, 1)
    cache = DynamicCache()
    tokens: list[int] = []
    shown = ""
    for _ in range(max_new_tokens):
        with torch.no_grad(), edited(lm, edit or {}):
            logits = lm.model(step, past_key_values=cache, use_cache=True, logits_to_keep=1).logits[0, -1]  # (vocab,)
        token = int(logits.argmax())
        if token in stops:
            break
        tokens.append(token)
        text = decoded(tok, tokens)
        if text.startswith(shown) and not text.endswith("\ufffd"):  # a character's bytes may span tokens
            yield text[len(shown) :]
            shown = text
        step = torch.tensor([[token]], device=lm.device)  # (1, 1)
    text = decoded(tok, tokens)
    if text != shown:
        yield text[len(shown) :]
