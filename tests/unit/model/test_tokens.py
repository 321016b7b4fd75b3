"""Byte tokens shown as their bytes: GPT-2's byte-level alphabet read back, partial UTF-8 as <0xXX>."""

from __future__ import annotations

from qrcore.editing.vocab import project_neurons
from qrcore.model.tokens import byte_decoder, bytes_text, is_byte_level, token_texts


def test_byte_alphabet_is_a_bijection_with_the_known_letters():
    chars = byte_decoder()
    assert sorted(chars.values()) == list(range(256))
    assert chars["Ġ"] == ord(" ") and chars["Ċ"] == ord("\n") and chars["A"] == ord("A") and chars["é"] == 0xE9


def test_bytes_text_by_hand():
    assert bytes_text("日本".encode()) == "日本"
    assert bytes_text(b" \xe6") == " <0xE6>"
    assert bytes_text(b"\x97\xa5x") == "<0x97><0xA5>x"
    assert bytes_text("é".encode()[:1] + b"a") == "<0xC3>a"


def test_tiny_models_tokenizer_splits_a_character_into_its_bytes(tiny):
    tok = tiny("llama").tokenizer
    assert is_byte_level(tok)
    ids = tok.encode(" 日本 Paris\n", add_special_tokens=False)
    texts = token_texts(tok, ids)
    assert texts == [" <0xE6>", "<0x97>", "<0xA5>", "本", " Paris", "\n"]
    assert "\ufffd" not in "".join(texts)
    assert "".join(texts).replace(" <0xE6><0x97><0xA5>", " 日") == tok.decode(ids)  # same text once joined


def test_hand_written_gpt2_pieces():
    class Pieces:
        """A slow GPT-2-style tokenizer of three pieces (byte_decoder marks it byte-level)."""

        byte_decoder = byte_decoder()
        vocab = ["æĹ¥", "Ġæ", "ĠParis"]

        def convert_ids_to_tokens(self, ids):
            return [self.vocab[i] for i in ids]

        def decode(self, ids):
            raise AssertionError("a byte-level piece is read from its bytes, not decoded")

    assert token_texts(Pieces(), [0, 1, 2]) == ["日", " <0xE6>", " Paris"]


def test_sentencepiece_byte_fallback_keeps_its_spelling():
    class Spm:
        """A SentencePiece-style tokenizer: '▁' for a space, bytes as <0xE6>, decoding a lone byte gives '�'."""

        vocab = ["▁Paris", "<0xE6>"]

        def convert_ids_to_tokens(self, ids):
            return [self.vocab[i] for i in ids]

        def decode(self, ids):
            return {0: "Paris", 1: "\ufffd"}[ids[0]]

    assert not is_byte_level(Spm())
    assert token_texts(Spm(), [0, 1]) == ["Paris", "<0xE6>"]


def test_vocabulary_projection_shows_no_replacement_characters(tiny):
    lm = tiny("llama")
    frame = project_neurons(lm, [(layer, n) for layer in range(4) for n in range(0, 96, 8)], k=30)
    tokens = [t for row in frame["tokens"] for t in row]
    assert not any("\ufffd" in t for t in tokens)
    ids = lm.tokenizer.convert_tokens_to_ids(["æĹ", "Ġæ"])
    assert token_texts(lm.tokenizer, ids) == ["<0xE6><0x97>", " <0xE6>"]
