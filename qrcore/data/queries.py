"""Queries: a free-form question with its answer and distractors (paper Sec. 4.1), or prompts given ready-made."""

from __future__ import annotations

from dataclasses import dataclass, field
import re
import unicodedata

from qrcore.errors import QRNError

MAX_OPTIONS = 26
ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
INVISIBLE = ("Cc", "Cf", "Zs", "Zl", "Zp")
"""Unicode categories that show nothing: control and format (zero-width) characters, spaces, line separators."""
OPTION_PATTERN = re.compile(r"^\s*\(?([A-Z])[.)]\s", re.MULTILINE)
"""An option line of a ready-made prompt: "A. text", " (B) text"."""
INLINE_OPTION = re.compile(r"(?<!\S)\(?([A-Z])[.)]\s")
"""An option written within a line: "Pick one: A. text B. text", "(A) text (B) text"."""


def blank(text: str) -> bool:
    """Whether `text` shows nothing: empty, or only spaces, zero-width or other invisible characters."""
    return all(unicodedata.category(c) in INVISIBLE for c in text)


def option_problem(option: str) -> str | None:
    """Why `option` cannot be one line of a prompt (empty or invisible, or several lines), or None if it can."""
    if blank(option):
        return "an option is empty; remove it or fill it in."
    if option.splitlines() != [option]:
        return f"option {option!r} contains a line break; write each option on one line."
    return None


def prompt_letters(prompt: str) -> tuple[str, ...]:
    """The option letters a ready-made prompt shows: its option lines, else its options within lines when they run
    A, B, ... in order (so "D. C. Washington" is none), else A-D."""
    lines = tuple(OPTION_PATTERN.findall(prompt))
    inline = "".join(INLINE_OPTION.findall(prompt))
    if len(lines) < 2 and len(inline) > 1 and ALPHABET.startswith(inline):
        return tuple(inline)
    return lines or tuple("ABCD")


@dataclass(frozen=True)
class Query:
    """One query of a dataset.

    Either `answer` plus `distractors` (turned into multi-choice prompts by `qrcore.data.prompts`), or
    ready-made `prompts` with their correct `labels` (the paper's released format).
    """

    id: str
    """Unique within its dataset."""
    group: str
    """Domain (biology, ...) or language code (ar, en, ...): the unit of clusters, heatmaps and PCR."""
    question: str
    """The free-form question (for ready-made prompts: the first prompt)."""
    answer: str = ""
    """The correct answer text."""
    distractors: tuple[str, ...] = ()
    """Wrong answers; empty means sample them from other answers of the same group or relation."""
    relation: str = ""
    """Language set: the LAMA relation (birth_place, ...); distractors come from the same relation."""
    prompts: tuple[str, ...] = ()
    """Ready-made prompts, one per template (imported paper data); empty for built-in queries."""
    labels: tuple[str, ...] = ()
    """The correct option letter of each ready-made prompt."""
    meta: dict = field(default_factory=dict, compare=False, hash=False)
    """Free extra fields kept from the source (e.g. the fact id shared across languages)."""

    def options(self) -> tuple[str, ...]:
        """The answer followed by the distractors (unshuffled)."""
        return (self.answer, *self.distractors)

    def validate(self) -> None:
        """Raise QRNError with a one-line message if the query cannot be asked."""
        where = f"query {self.id!r}"
        if blank(self.question):
            raise QRNError(f"{where}: the question is empty; write a question.")
        if self.prompts:
            if len(self.prompts) != len(self.labels):
                raise QRNError(
                    f"{where}: {len(self.prompts)} prompts but {len(self.labels)} labels; give one label per prompt."
                )
            for i, (prompt, label) in enumerate(zip(self.prompts, self.labels), start=1):
                if label not in prompt_letters(prompt):
                    raise QRNError(
                        f"{where}: label {label!r} of prompt {i} is not one of its options "
                        f"{', '.join(prompt_letters(prompt))}; give the letter of an option it shows."
                    )
            return
        if blank(self.answer):
            raise QRNError(f"{where}: the answer is empty; give the correct answer.")
        opts = [o.strip() for o in self.options()]
        problem = next(filter(None, map(option_problem, opts)), None)
        if problem:
            raise QRNError(f"{where}: {problem}")
        if len(set(o.casefold() for o in opts)) != len(opts):
            dup = next(o for o in opts if sum(p.casefold() == o.casefold() for p in opts) > 1)
            raise QRNError(f"{where}: option {dup!r} appears twice; options must be distinct.")
        if self.distractors and len(opts) < 2:
            raise QRNError(f"{where}: needs at least 2 options.")
        if len(opts) > MAX_OPTIONS:
            raise QRNError(
                f"{where}: {len(opts)} options, more than the {MAX_OPTIONS} letters A-Z; give at most {MAX_OPTIONS}."
            )


def make_query(question: str, options: list[str], answer: str, *, id: str = "custom", group: str = "custom") -> Query:
    """A query from a question, its options (in the order the user typed them) and the correct one.

    The CLI's and the explorer's custom questions come through here, so both give the same messages.
    """
    opts = [o.strip() for o in options]
    if blank(question):
        raise QRNError("the question is empty; write a question.")
    if len(opts) < 2:
        raise QRNError(f"{len(opts)} option(s) given; give at least 2 options.")
    if len(opts) > MAX_OPTIONS:
        raise QRNError(
            f"{len(opts)} options given, more than the {MAX_OPTIONS} letters A-Z; give at most {MAX_OPTIONS}."
        )
    problem = next(filter(None, map(option_problem, opts)), None)
    if problem:
        raise QRNError(problem)
    seen = [o.casefold() for o in opts]
    dup = next((o for o, c in zip(opts, seen) if seen.count(c) > 1), None)
    if dup is not None:
        raise QRNError(f"option {dup!r} appears twice; options must be distinct.")
    if answer.strip() not in opts:
        raise QRNError(f"the answer {answer!r} is not among the options {opts}; pass it as one of the options.")
    q = Query(
        id=id,
        group=group,
        question=question.strip(),
        answer=answer.strip(),
        distractors=tuple(o for o in opts if o != answer.strip()),
    )
    q.validate()
    return q
