"""Slow, obviously right versions of the engine's fast paths, kept as their oracles.

- `ig_prompt_oracle`: the textbook integrated-gradients neuron attribution (Dai et al.; the paper's released code)
  for `qrcore.attribution.ig`: per layer, a full-sequence forward and backward of m scaled copies, the activation
  replaced at the last position.
- `held_out_oracle`: for `qrcore.evaluation.evaluate.held_out_activations`, one full forward of the prompt and of the
  prompt + each option letter.
- `prefix_cache_oracle`: for `qrcore.attribution.prefixes.prefix_cache`, one forward of each whole prompt prefix.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from qrcore.attribution.ig import quadrature
from qrcore.attribution.prefixes import PackedPrefix
from qrcore.data.prompts import ChoicePrompt
from qrcore.model.ffn import ffn_sites
from qrcore.model.forward import clean_pass, prefix_kv
from qrcore.model.interventions import patch_ffn
from qrcore.model.spec import LoadedModel
from qrcore.settings import AttributionSettings


def ig_prompt_oracle(
    lm: LoadedModel, prompt: ChoicePrompt, settings: AttributionSettings, layers: list[int] | None = None
) -> np.ndarray:
    """Raw IG (layers, neurons) of one prompt, layer by layer with full sequences (Eq. 5); rows not in `layers` stay 0."""
    model = lm.model
    sites = ffn_sites(model)
    ids = torch.tensor([prompt.input_ids], device=lm.device)  # (1, T)
    _, f0, _ = clean_pass(model, sites, ids)  # (layers, neurons)
    steps = settings.steps
    alphas, weights = quadrature(settings, f0.dtype, f0.device)  # (m,), (m,)
    ig = np.zeros(f0.shape, dtype=np.float32)
    for layer in range(len(sites)) if layers is None else layers:
        x = (alphas[:, None] * f0[layer]).requires_grad_()  # (m, neurons)

        def patch(_layer: int, f: torch.Tensor) -> torch.Tensor:  # f: (m, T, neurons)
            return torch.cat([f[:, :-1], x[:, None]], dim=1)

        with patch_ffn(model, patch, layers=[layer], sites=sites):
            logits = model(ids.expand(steps, -1), use_cache=False).logits[:, -1]  # (m, vocab)
        p = logits.float().softmax(-1)[:, prompt.target_id].sum()
        (grad,) = torch.autograd.grad(p, x)  # (m, neurons)
        ig[layer] = (f0[layer] * (weights @ grad)).float().cpu().numpy()
    return ig


def held_out_oracle(lm: LoadedModel, prompt: ChoicePrompt) -> tuple[np.ndarray, np.ndarray]:
    """f at the prompt's answer position (layers, neurons) and at each option letter appended to it (options, layers,
    neurons): one full forward of the prompt, then one of prompt + letter per letter."""
    sites = lm.sites

    def last_f(ids: Sequence[int]) -> np.ndarray:
        return clean_pass(lm.model, sites, torch.tensor([ids], device=lm.device))[1].float().cpu().numpy()  # (L, N)

    return last_f(prompt.input_ids), np.stack([last_f([*prompt.input_ids, letter]) for letter in prompt.letter_ids])


def prefix_cache_oracle(lm: LoadedModel, prompts: list[ChoicePrompt]) -> PackedPrefix:
    """The prompts' prefix keys/values, each whole prefix in a forward of its own, laid one after another."""
    each = [prefix_kv(lm.model, torch.tensor([p.input_ids[:-1]], device=lm.device)) for p in prompts]
    kv = [
        (torch.cat([e[i][0] for e in each], dim=2), torch.cat([e[i][1] for e in each], dim=2))
        for i in range(len(each[0]))
    ]
    return PackedPrefix(kv, [len(p.input_ids) - 1 for p in prompts])
