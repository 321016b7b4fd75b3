"""Model FLOPs of one prompt's attribution, counted from the shapes, and the machine's measured matmul peak.

`qrn bench attribution` divides the first by the measured seconds and compares the rate with the second, so that a
speed figure says how close to this machine it is. Only matrix products are counted (linear layers, attention
scores and the LM head), forward and input-gradient backward; element-wise work is overhead, not model arithmetic.
`tests/unit/model/test_flops.py` checks the count against torch's FlopCounterMode on a real run.
"""

from __future__ import annotations

from dataclasses import dataclass
import time
from typing import TYPE_CHECKING

import torch

from qrcore.model.ffn import decoder_layers
from qrcore.model.spec import unembedding

if TYPE_CHECKING:
    from transformers import PreTrainedModel


@dataclass(frozen=True)
class ModelShape:
    """What the count needs of a model: each decoder layer's matrix weights, attention width and the LM head."""

    layer_weights: tuple[int, ...]
    """Per decoder layer, the number of entries of its 2-D weights (a row through the layer costs 2x that)."""
    attention_width: int
    """Query heads x head size: a score and a weighted sum per (row, key) cost 2 x 2 x this."""
    head_weights: int
    """Entries of the LM head (vocabulary x hidden)."""

    @classmethod
    def of(cls, model: PreTrainedModel) -> ModelShape:
        """The shape of a loaded causal LM."""
        config = model.config
        heads = getattr(config, "num_attention_heads", None) or config.n_head
        hidden = getattr(config, "hidden_size", None) or config.n_embd
        head_dim = getattr(config, "head_dim", None) or hidden // heads
        return cls(
            tuple(sum(p.numel() for p in block.parameters() if p.ndim == 2) for block in decoder_layers(model)),
            heads * head_dim,
            unembedding(model).numel(),
        )

    def forward(self, rows: list[int], keys: list[float], head_rows: int) -> float:
        """Forward FLOPs when layer k runs rows[k] positions that each attend to keys[k] positions, and the LM head
        runs head_rows positions."""
        layers = sum(2 * r * w + 4 * r * k * self.attention_width for r, w, k in zip(rows, self.layer_weights, keys))
        return layers + 2 * head_rows * self.head_weights


def ig_prompt_flops(shape: ModelShape, length: int, steps: int, at_clean_point: bool = False) -> int:
    """Matmul FLOPs of `NeuronAttribution.ig_prompt` on a prompt of `length` tokens with m = `steps`, one pass.

    The prefix (length - 1 positions, causal) and the answer position run once, forward only. In the packed pass the
    m copies patched at layer l enter at layer l, so layer k runs m (k + 1) rows, each attending to the prefix and to
    itself (`qrcore.model.forward.packed_attention_forward`); the LM head runs every row. The backward to the copies
    costs as much again for every product (input gradients only: no weight gradients are taken). At the single
    point alpha = 1 (`at_clean_point`, the preview) the answer position's forward is the only one, and its backward.
    """
    n_layers, prefix = len(shape.layer_weights), length - 1
    once = shape.forward([prefix] * n_layers, [(prefix + 1) / 2] * n_layers, 1)  # causal: on average half the keys
    answer = shape.forward([1] * n_layers, [length] * n_layers, 1)
    if at_clean_point:
        return int(once + 2 * answer)
    rows = [steps * (k + 1) for k in range(n_layers)]
    packed = shape.forward(rows, [length] * n_layers, n_layers * steps)
    return int(once + answer + 2 * packed)


def matmul_peak(dtype: torch.dtype, device: torch.device, size: int = 2048, repeats: int = 5) -> float:
    """Best FLOP/s of a (size x size) @ (size x size) product in `dtype` on `device`, with torch's current threads."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    best = float("inf")
    for _ in range(repeats + 1):  # the first is a warm-up
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        _ = a @ b  # timed
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best
