"""Architecture-agnostic access to the attributed FFN activation of every layer, and hooks on it.

The attributed activation (paper Sec. 4.2) is the up-projection output f = X W^U of a gated FFN
(Llama, Mistral, Qwen2, Gemma, Phi-3 with a fused gate_up projection) and the input of the
activation function of a classic two-layer FFN (GPT-2's c_fc). Sites are found by inspecting
modules and shapes, never by matching the model's name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from qrcore.errors import QRNError

# Child-module names of the FFN pieces, in the spellings of the transformers model zoo.
UP_NAMES = ("up_proj", "w3", "fc_in", "c_fc", "fc1", "dense_h_to_4h", "up")
GATE_UP_NAMES = ("gate_up_proj",)
GATE_NAMES = ("gate_proj", "w1", "gate")
DOWN_NAMES = ("down_proj", "w2", "c_proj", "fc_out", "fc2", "dense_4h_to_h", "down")
MLP_NAMES = ("mlp", "feed_forward", "ffn")

ActivationFn = Callable[[int, torch.Tensor], torch.Tensor]
"""fn(layer, f) -> f': receives f of shape (batch, seq, neurons) and returns the value to use instead."""


@dataclass(frozen=True)
class FFNSite:
    """Where layer `layer`'s attributed activation f is produced and read back out."""

    layer: int
    module: nn.Module
    """The module whose output holds f (up_proj, gate_up_proj or c_fc)."""
    offset: int
    """f is output[..., offset:offset + n_neurons] (nonzero for a fused gate_up projection)."""
    n_neurons: int
    down: nn.Module
    """The down-projection; value vector of neuron i: `value_vectors()[i]`."""

    def value_vectors(self) -> torch.Tensor:
        """(neurons, hidden): what each neuron writes to the residual stream, per unit of activation."""
        w = self.down.weight
        if not isinstance(w, torch.Tensor):
            raise TypeError(
                f"the down projection {type(self.down).__name__} of layer {self.layer} has no weight tensor"
            )
        # nn.Linear stores (out=hidden, in=neurons); GPT-2's Conv1D stores (in=neurons, out=hidden).
        return w.T if isinstance(self.down, nn.Linear) else w


def _out_features(m: nn.Module, where: str) -> int:
    """Output width of a Linear or a GPT-2 Conv1D; QRNError naming `where` for another module."""
    if isinstance(m, nn.Linear):
        return m.out_features
    nf = getattr(m, "nf", None)  # transformers.pytorch_utils.Conv1D
    if nf is None:
        raise QRNError(
            f"{where}: its up projection {type(m).__name__} is neither a Linear nor a Conv1D; not supported."
        )
    return int(nf)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The model's stack of decoder blocks: the longest ModuleList whose length is the layer count."""
    n = getattr(model.config, "num_hidden_layers", None) or getattr(model.config, "n_layer", None)
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) == n]
    if not lists:
        raise QRNError(
            f"{type(model).__name__}: found no list of {n} decoder layers; this architecture is not supported."
        )
    return lists[0]


def _site(layer: int, block: nn.Module, model_name: str) -> FFNSite:
    """Find the FFN site inside one decoder block."""
    mlp = next((getattr(block, n) for n in MLP_NAMES if hasattr(block, n)), None)
    if mlp is None:
        raise QRNError(
            f"{model_name}: decoder layer {layer} has no FFN submodule named one of {MLP_NAMES}; "
            "this architecture is not supported."
        )
    children = dict(mlp.named_children())
    down = next((children[n] for n in DOWN_NAMES if n in children), None)
    fused = next((children[n] for n in GATE_UP_NAMES if n in children), None)
    up = next((children[n] for n in UP_NAMES if n in children), None)
    projection = fused if fused is not None else up
    if down is None or projection is None:
        raise QRNError(
            f"{model_name}: FFN of layer {layer} ({type(mlp).__name__}) has children {sorted(children)}; "
            f"looked for an up projection {UP_NAMES + GATE_UP_NAMES} and a down projection {DOWN_NAMES}. "
            "This architecture is not supported."
        )
    width = _out_features(projection, f"{model_name}: FFN of layer {layer}")
    if fused is not None:  # Phi-3: output is [gate | up]; f is the second half.
        return FFNSite(layer, fused, width // 2, width // 2, down)
    return FFNSite(layer, projection, 0, width, down)


def ffn_sites(model: nn.Module) -> list[FFNSite]:
    """One FFNSite per decoder layer, bottom to top."""
    name = type(model).__name__
    return [_site(i, block, name) for i, block in enumerate(decoder_layers(model))]
