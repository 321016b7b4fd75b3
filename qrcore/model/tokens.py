"""Token ids as readable text: a byte-level BPE token (GPT-2, SmolLM2, Qwen2: Ġ for a space, Ċ for a newline) is
mapped back to its bytes, and a byte that is only part of a UTF-8 character shows as <0xE6> instead of '�'."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

BYTE_TEXT = "<0x{:02X}>"
"""How a byte that is not a whole UTF-8 character is shown (SentencePiece's byte-fallback spelling)."""
REPLACEMENT = "\ufffd"


def decoded(tokenizer: PreTrainedTokenizerBase, ids: Sequence[int]) -> str:
    """The text of token `ids`, special tokens left out, stripped."""
    text = tokenizer.decode(list(ids), skip_special_tokens=True)
    if not isinstance(text, str):
        raise TypeError(f"{type(tokenizer).__name__}.decode gave a {type(text).__name__} for one sequence")
    return text.strip()


@cache
def byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet read backwards: the printable character that stands for each of the 256 bytes."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


def bytes_text(data: bytes) -> str:
    """`data` decoded as UTF-8, each byte that is not part of a whole character shown as BYTE_TEXT."""
    text = data.decode("utf-8", errors="surrogateescape")  # a stray byte b becomes the lone surrogate U+DC00 + b
    return "".join(BYTE_TEXT.format(ord(c) - 0xDC00) if 0xDC80 <= ord(c) <= 0xDCFF else c for c in text)


def is_byte_level(tokenizer) -> bool:
    """Whether the tokenizer spells tokens in GPT-2's byte-level alphabet (its decoder is a ByteLevel one)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return backend.decoder is not None and b'"ByteLevel"' in backend.decoder.__getstate__()  # also in a Sequence
    return hasattr(tokenizer, "byte_decoder")  # a slow GPT-2-style tokenizer


def quoted(tokens: list[str]) -> str:
    """Tokens as one line of Python literals ('Paris' ' Paris'), so spaces, empty and byte tokens stay visible."""
    return " ".join(map(repr, tokens))


def token_texts(tokenizer, ids: list[int]) -> list[str]:
    """Each token's own text: its bytes for a byte-level tokenizer (partial UTF-8 as <0xXX>), else its decoding, or
    its raw spelling (SentencePiece's <0xE6>) where decoding it alone gives only '�'."""
    pieces = tokenizer.convert_ids_to_tokens(list(ids))
    chars = byte_decoder()
    byte_level = is_byte_level(tokenizer)
    out = []
    for token_id, piece in zip(ids, pieces):
        if byte_level and piece is not None and all(c in chars for c in piece):
            out.append(bytes_text(bytes(chars[c] for c in piece)))
            continue
        text = tokenizer.decode([token_id])
        out.append(piece if REPLACEMENT in text and piece else text)
    return out
