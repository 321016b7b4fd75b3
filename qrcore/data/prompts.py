"""Multi-choice transformation (paper Sec. 4.1): a query becomes prompts that ask for the option letter only.

Each template shows the options in its own seeded shuffle; the target is the token the model would
actually emit for the correct letter, derived from how prompt + letter tokenizes.
"""

from __future__ import annotations

from dataclasses import dataclass
import hashlib
import random
import string

from qrcore.data.queries import Query, prompt_letters
from qrcore.errors import QRNError
from qrcore.settings import PromptSettings

TEMPLATES = (
    "Answer the following multiple-choice question with the letter of the correct option only.\n\n"
    "Question: {question}\n{options}\nAnswer:",
    "Here is a multiple-choice question. Reply with just the letter of the right answer, no explanation.\n"
    "{question}\n{options}\nThe letter of the right answer is",
    "Pick the correct answer to the question below. Respond with a single letter.\n"
    "Question: {question}\nChoices:\n{options}\nYour answer:",
)
OPTION_LINE = " {letter}. {text}"


@dataclass(frozen=True)
class ChoicePrompt:
    """One templated prompt of a query, tokenized, with the token id of each option letter."""

    text: str
    """The full model input (chat template applied where the tokenizer has one)."""
    input_ids: tuple[int, ...]
    letters: tuple[str, ...]
    """Option letters in display order (A, B, ...)."""
    letter_ids: tuple[int, ...]
    """Token the model emits for each letter right after the prompt."""
    correct: int
    """Index into letters of the correct option."""
    options: tuple[str, ...] = ()
    """Option texts in display order (empty for imported ready-made prompts)."""

    @property
    def target_id(self) -> int:
        """Token id of the correct letter: the output whose probability is attributed."""
        return self.letter_ids[self.correct]


def _rng(seed: int, *parts: str) -> random.Random:
    """A Random seeded by the settings seed and stable strings (Python's hash() is salted per process)."""
    digest = hashlib.sha256("\x1f".join((str(seed), *parts)).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def fill_distractors(queries: list[Query], n: int = 3, seed: int = 0) -> list[Query]:
    """Give queries without distractors n answers of other queries of the same relation (or group)."""
    pools: dict[str, list[str]] = {}
    for q in queries:
        pools.setdefault(q.relation or q.group, []).append(q.answer)
    out = []
    for q in queries:
        if q.distractors or q.prompts:
            out.append(q)
            continue
        pool = sorted({a for a in pools[q.relation or q.group] if a.casefold() != q.answer.casefold()})
        if len(pool) < 1:
            raise QRNError(
                f"query {q.id!r}: no other answers in {q.relation or q.group!r} to draw distractors from; "
                "give distractors explicitly."
            )
        picked = _rng(seed, "distractors", q.id).sample(pool, min(n, len(pool)))
        out.append(Query(**{**q.__dict__, "distractors": tuple(picked)}))
    return out


def _wrap(tokenizer, body: str) -> str:
    """Apply the tokenizer's chat template (one user turn, generation prompt) or return plain text."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": body}], tokenize=False, add_generation_prompt=True
        )
    return body


def _encode(tokenizer, text: str) -> list[int]:
    """Token ids of text exactly as given (the chat template already holds any special tokens)."""
    add = not getattr(tokenizer, "chat_template", None)
    return tokenizer(text, add_special_tokens=add)["input_ids"]


def letter_token(tokenizer, text: str, ids: list[int], letter: str) -> int:
    """The single token the model emits for `letter` after `text`, checked against the joint tokenization.

    After a space or newline the letter stands alone; otherwise it carries a leading space ("Answer: B").
    """
    sep = "" if text[-1:].isspace() else " "
    joint = _encode(tokenizer, text + sep + letter)
    if joint[: len(ids)] != ids or len(joint) != len(ids) + 1:
        raise QRNError(
            f"the tokenizer does not emit {sep + letter!r} as one token after the prompt; "
            "this tokenizer is not supported for letter answers."
        )
    return joint[-1]


def build_prompt(
    tokenizer, body: str, letters: tuple[str, ...], correct: int, options: tuple[str, ...], max_length: int | None
) -> ChoicePrompt:
    """Tokenize one prompt body and derive the letter tokens; a prompt over the context is an error."""
    text = _wrap(tokenizer, body)
    ids = _encode(tokenizer, text)
    if max_length is not None and len(ids) + 1 > max_length:
        raise QRNError(
            f"the prompt is {len(ids)} tokens, over the model's context of {max_length}; shorten the question or options."
        )
    letter_ids = tuple(letter_token(tokenizer, text, ids, letter) for letter in letters)
    return ChoicePrompt(text, tuple(ids), letters, letter_ids, correct, options)


def check_templates(settings: PromptSettings) -> None:
    """One-line QRNError unless settings.templates is between 1 and the number of TEMPLATES."""
    if not 1 <= settings.templates <= len(TEMPLATES):
        raise QRNError(
            f"--templates is {settings.templates}; there are {len(TEMPLATES)} prompt templates, "
            f"so pass 1 to {len(TEMPLATES)}."
        )


def query_prompts(
    query: Query, tokenizer, settings: PromptSettings = PromptSettings(), max_length: int | None = None
) -> list[ChoicePrompt]:
    """The query's prompts: ready-made ones as given, or `settings.templates` templates with shuffled options."""
    check_templates(settings)
    query.validate()
    if query.prompts:
        out = []
        for text, label in zip(query.prompts, query.labels):  # validate() checked that each label is offered
            letters = prompt_letters(text)
            out.append(build_prompt(tokenizer, text, letters, letters.index(label), (), max_length))
        return out
    options = query.options()
    letters = tuple(string.ascii_uppercase[: len(options)])
    out = []
    for k in range(settings.templates):
        order = list(range(len(options)))
        _rng(settings.seed, "order", query.id, str(k)).shuffle(order)
        shown = tuple(options[i] for i in order)
        lines = "\n".join(OPTION_LINE.format(letter=l, text=t) for l, t in zip(letters, shown))
        body = TEMPLATES[k].format(question=query.question, options=lines)
        out.append(build_prompt(tokenizer, body, letters, order.index(0), shown, max_length))
    return out
