"""What a hook context manager may leave on a model when it does not clean up."""

from __future__ import annotations

import torch

from qrcore.model.interventions import PACKED


def hooks_left(model: torch.nn.Module) -> int:
    """Forward, forward-pre and backward hooks and replaced forwards on any module of `model`, plus 1 while its
    attention runs the packed implementation."""
    on_modules = sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) + ("forward" in m.__dict__)
        for m in model.modules()
    )
    return on_modules + (model.config._attn_implementation == PACKED)
