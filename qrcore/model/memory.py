"""The memory of an attribution pass against what the machine has: too many scaled copies are refused before any
is allocated."""

from __future__ import annotations

import os
from pathlib import Path
import resource
from typing import TYPE_CHECKING

import torch

from qrcore.errors import QRNError
from qrcore.model.ffn import ffn_sites
from qrcore.model.spec import input_embedding

if TYPE_CHECKING:
    from transformers import PreTrainedModel

SOFTMAX_BYTES = 3 * 4
"""Bytes per vocabulary entry and copy: logits, soft-max and its gradient in float32 (measured on tiny-llama:
570-586 KB a copy for its 49,152 tokens, 3 x 4 bytes each)."""
CGROUP = Path("/sys/fs/cgroup")
"""The cgroup v2 files of this process's memory limit and use (a container's limit)."""


def pass_bytes(model: PreTrainedModel, copies: int) -> int:
    """Least bytes one packed pass of `copies` scaled copies holds: each copy's soft-max over the vocabulary, and its
    hidden state and FFN activations at every layer."""
    sites = ffn_sites(model)
    embedding = input_embedding(model)
    element = next(model.parameters()).element_size()
    per_layer = (embedding.embedding_dim + sites[0].n_neurons) * element
    return copies * (embedding.num_embeddings * SOFTMAX_BYTES + len(sites) * per_layer)


def available_bytes(device: torch.device) -> int:
    """Free memory of the device: a GPU's free memory, or on the CPU the least of the kernel's available memory, the
    container's memory limit less its use, and the address-space limit (ulimit -v) less this process's size."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    free = [int(meminfo["MemAvailable"].split()[0]) * 1024]
    limit, used = CGROUP / "memory.max", CGROUP / "memory.current"
    if limit.is_file() and used.is_file() and limit.read_text().strip() != "max":
        free.append(int(limit.read_text()) - int(used.read_text()))
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        status = dict(line.split(":", 1) for line in Path(f"/proc/{os.getpid()}/status").read_text().splitlines())
        free.append(soft - int(status["VmSize"].split()[0]) * 1024)
    return min(free)


def check_pass_memory(model: PreTrainedModel, copies: int, steps: int) -> None:
    """One-line QRNError when a pass of `copies` scaled copies (made by `steps` points of Eq. 5) cannot fit in the
    memory the model's device has free."""
    device = next(model.parameters()).device
    need, free = pass_bytes(model, copies), available_bytes(device)
    if need > free:
        raise QRNError(
            f"--steps {steps} needs at least {need / 2**30:.1f} GiB for one attribution pass ({copies:,} scaled "
            f"copies) but {free / 2**30:.1f} GiB of {device.type} memory is free; pass fewer --steps."
        )
