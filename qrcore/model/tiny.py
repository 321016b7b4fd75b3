"""Tiny seeded random models of several architectures, built from configs, for tests and demos offline."""

from __future__ import annotations

import torch

from qrcore.model.spec import LoadedModel, ModelSpec, fingerprint

ARCHITECTURES = ("llama", "qwen2", "gemma3", "phi3", "gpt2")
DEEPER = "gemma3"
"""The tiny architecture with 6 layers x 128 neurons (the others have 4 x 96), so that tests can compare depths."""


def tiny_config(arch: str, vocab_size: int):
    """A 64-wide config of the given architecture: 4 layers of 96 FFN neurons (DEEPER: 6 of 128)."""
    from transformers import AutoConfig

    layers, neurons = (6, 128) if arch == DEEPER else (4, 96)
    common = dict(vocab_size=vocab_size, tie_word_embeddings=True, initializer_range=0.3)
    if arch == "gpt2":
        return AutoConfig.for_model(
            "gpt2",
            n_layer=layers,
            n_embd=64,
            n_head=4,
            n_inner=neurons,
            n_positions=512,
            bos_token_id=0,
            eos_token_id=0,
            **common,
        )
    extra = (
        {
            "head_dim": 16,
            "sliding_window": 32,
            "query_pre_attn_scalar": 16,
            "layer_types": ["sliding_attention", "full_attention"] * (layers // 2),
        }
        if arch == "gemma3"
        else {}
    )
    return AutoConfig.for_model(
        ("gemma3_text" if arch == "gemma3" else arch),
        num_hidden_layers=layers,
        hidden_size=64,
        intermediate_size=neurons,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        **common,
        **extra,
    )


def tiny_model(arch: str, tokenizer, seed: int = 0) -> LoadedModel:
    """A randomly initialised tiny model (fixed seed) sharing `tokenizer`, ready for attribution."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(
        tiny_config(arch, len(tokenizer)), dtype=torch.float32, attn_implementation="eager"
    ).eval()
    return LoadedModel(model, tokenizer, ModelSpec(name=f"tiny-{arch}"), fingerprint(model))
