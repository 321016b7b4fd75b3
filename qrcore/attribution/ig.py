"""Neuron attribution NA (paper Eq. 5): integrated gradients of the correct letter's probability with
respect to every FFN neuron's activation f at the answer position.

For template p and layer l, IG_l(f) = f * sum_k w_k dP(alpha_k f)/df over m points alpha_k of [0, 1] with weights w_k
(`quadrature`: the authors' equal-weight Riemann sum, or Gauss-Legendre), where only f at the answer (last) position
is scaled. This module returns each
template's IG; `qrcore.selection.qrnca.query_na` forms the coarse cluster and divides by Z to give NA.

The fast path exploits four facts: (1) scaling f at the last position leaves every earlier position
unchanged, so their keys and values are computed once (a prefix KV cache); (2) the m scaled copies of
all layers can go through together, packed as extra positions of one sequence that each attend to the
prefix and to themselves only (a 4D mask, all at position id T-1); (3) a copy patched at layer l differs
from the clean run only from layer l up, so one forward and one backward give every layer's gradient; (4) under
that mask a copy needs only its own packed key, not all of them (`qrcore.model.forward.packed_attention_forward`).
At the single point alpha = 1 (the preview) all copies are the clean run, so one row per prompt and one backward
give every layer's gradient. `qrcore.attribution.oracle` keeps the textbook algorithm; tests check the two agree.
"""

from __future__ import annotations

from dataclasses import dataclass
import time
from typing import Callable, Generator, Sequence

import numpy as np
import torch
from transformers import DynamicCache

from qrcore.attribution.prefixes import PromptStem, prefix_cache, prompt_stem
from qrcore.attribution.results import PartialAttribution, QueryAttribution
from qrcore.data.prompts import ChoicePrompt, query_prompts
from qrcore.data.queries import Query
from qrcore.model.ffn import decoder_layers
from qrcore.model.forward import clean_pass, packed_mask, prefix_kv
from qrcore.model.interventions import enter_at_layer, packed_attention, patch_ffn
from qrcore.model.memory import check_pass_memory
from qrcore.model.spec import LoadedModel
from qrcore.progress import Progress
from qrcore.settings import AttributionSettings, PromptSettings


def quadrature(
    settings: AttributionSettings, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(m,) points alpha of [0, 1] and (m,) weights summing to 1 of Eq. 5's integral under `settings.riemann`.

    linspace(0, 1, m) (the authors' code) or k/m, k = 1..m (the text), each with weights 1/m; or the m Gauss-Legendre
    nodes mapped from [-1, 1] to [0, 1], with their weights halved.
    """
    m = settings.steps
    if settings.riemann == "gauss_legendre":
        nodes, weights = np.polynomial.legendre.leggauss(m)  # (m,), (m,) on [-1, 1], weights sum to 2
        return (
            torch.tensor((nodes + 1) / 2, dtype=dtype, device=device),
            torch.tensor(weights / 2, dtype=dtype, device=device),
        )
    if settings.riemann == "linspace":
        alphas = torch.linspace(0, 1, m, dtype=dtype, device=device)  # (m,)
    else:
        alphas = torch.arange(1, m + 1, dtype=dtype, device=device) / m  # (m,)
    return alphas, torch.full((m,), 1 / m, dtype=dtype, device=device)


def live_block(n_layers: int) -> int:
    """Layers per block of the query lab's top-down attribution: seven blocks a model (4 layers on Qwen2.5-Coder-1.5B's
    28), so a partial result comes after the first seventh of the layers, the cheapest."""
    return max(1, -(-n_layers // 7))


class TargetProbability(torch.autograd.Function):
    """P(target) of each row from its logits, with one soft-max over the vocabulary kept for the backward.

    The textbook `softmax(logits)[:, target]` (the oracle's) passes over the (rows, vocabulary) logits about six times
    forward and backward; here the forward computes the soft-max s once, in float32 at least, and the backward reuses
    it: dP_t/dz = P_t (onehot_t - s).
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, target: int) -> torch.Tensor:  # logits: (rows, vocab)
        s = logits.softmax(-1, dtype=torch.promote_types(logits.dtype, torch.float32))  # (rows, vocab)
        p = s[:, target].clone()  # (rows,)
        ctx.save_for_backward(s, p)
        ctx.target, ctx.dtype = target, logits.dtype
        return p

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        s, p = ctx.saved_tensors  # (rows, vocab), (rows,)
        gp = grad * p  # (rows,)
        g = s * -gp[:, None]  # (rows, vocab)
        g[:, ctx.target] += gp
        return g.to(ctx.dtype), None


@dataclass(frozen=True)
class CleanState:
    """A prompt's clean pass at its answer position, which each layer chunk's packed pass starts from."""

    prompt: ChoicePrompt
    ids: torch.Tensor
    """(1, T) the prompt's token ids."""
    kv: list[tuple[torch.Tensor, torch.Tensor]]
    """The prefix's keys and values per layer."""
    f0: torch.Tensor
    """(layers, neurons) f at the answer position."""
    h0: torch.Tensor
    """(layers, hidden) the residual stream entering each layer at the answer position."""
    letter_probs: torch.Tensor
    """(options,) each option letter's probability."""


class NeuronAttribution:
    """NA of every FFN neuron for a query, captum-style: build once, call `attribute()` per query."""

    def __init__(
        self,
        lm: LoadedModel,
        settings: AttributionSettings = AttributionSettings(),
        prompt_settings: PromptSettings = PromptSettings(),
        max_copies: int = 4096,
        stems_for: Sequence[Query] = (),
    ):
        self.lm = lm
        self.settings = settings
        self.prompt_settings = prompt_settings
        self.sites = lm.sites
        self.blocks = decoder_layers(lm.model)
        self.max_copies = max_copies
        """Most scaled copies in one pass; layers are split into passes to bound memory."""
        check_pass_memory(lm.model, settings.steps * len(self.layer_chunks[0]), settings.steps)
        self.stems = self.template_stems(stems_for)
        """Per template, the start that the prompts of `stems_for` share, computed once for every later query."""

    @property
    def layer_chunks(self) -> list[range]:
        """Layer ranges attributed together in one packed pass."""
        per = max(1, self.max_copies // self.settings.steps)
        n = len(self.sites)
        return [range(a, min(a + per, n)) for a in range(0, n, per)]

    def prompts(self, query: Query) -> list[ChoicePrompt]:
        """The query's multi-choice prompts for this model."""
        limit = getattr(self.lm.model.config, "max_position_embeddings", None)
        return query_prompts(query, self.lm.tokenizer, self.prompt_settings, limit)

    def template_stems(self, queries: Sequence[Query]) -> list[PromptStem | None]:
        """Per template, the start its prompts of `queries` share (`prompt_stem`); none for fewer than two queries."""
        if len(queries) < 2:
            return []
        prompts = [self.prompts(q) for q in queries]
        templates = max(map(len, prompts))
        return [prompt_stem(self.lm, [p[t] for p in prompts if len(p) > t]) for t in range(templates)]

    def attribute(self, query: Query, progress: Progress | None = None) -> QueryAttribution:
        """Each template's IG (Eq. 5 before Z), answer-position activations and answer probabilities of one query."""
        start = time.perf_counter()
        prompts = self.prompts(query)
        total, done = 1 if self.at_clean_point else len(prompts) * len(self.layer_chunks), 0

        def tick() -> None:
            nonlocal done
            done += 1
            if progress:
                progress(done, total, f"pass {done} of {total}")

        if self.at_clean_point:
            per_prompt = self.gradient_x_activation(prompts)
            tick()
        else:
            cache = prefix_cache(self.lm, prompts, self.stems)  # every prompt's prefix in one forward
            per_prompt = [self.ig_prompt(prompt, tick, cache.prompt(i)) for i, prompt in enumerate(prompts)]
        return self._result(query, prompts, per_prompt, start)

    @staticmethod
    def _result(
        query: Query, prompts: Sequence[ChoicePrompt], per_prompt: Sequence[tuple], start: float
    ) -> QueryAttribution:
        """The QueryAttribution of each prompt's (IG, f, letter probabilities); `prompts` give the correct letters."""
        igs, acts, probs, hits = [], [], [], []
        for prompt, (ig, f0, letter_probs) in zip(prompts, per_prompt):
            igs.append(ig)
            acts.append(f0)
            probs.append(letter_probs[prompt.correct])
            hits.append(float(np.argmax(letter_probs) == prompt.correct))
        return QueryAttribution(
            query.id,
            np.stack(igs),
            np.stack(acts).mean(axis=0, dtype=np.float32),
            float(np.mean(probs)),
            float(np.mean(hits)),
            time.perf_counter() - start,
        )

    def ig_prompt(
        self,
        prompt: ChoicePrompt,
        on_pass: Callable[[], None] = lambda: None,
        kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
    ):
        """Raw IG of one prompt (layers, neurons), f at the answer position, and each letter's probability.

        `kv`: the prompt's prefix keys/values if already computed (`prefix_cache`); else computed here.
        """
        if self.at_clean_point:
            result = self.gradient_x_activation([prompt])[0]
            on_pass()
            return result
        state = self.clean_state(prompt, kv)
        ig = torch.zeros_like(state.f0, dtype=torch.float32)  # (layers, neurons)
        for chunk in self.layer_chunks:
            ig[chunk] = self.chunk_ig(state, chunk)
            on_pass()
        return ig.cpu().numpy(), state.f0.float().cpu().numpy(), state.letter_probs.cpu().numpy()

    def clean_state(
        self, prompt: ChoicePrompt, kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None
    ) -> CleanState:
        """The prompt's clean pass: what every layer chunk's packed pass starts from."""
        ids = torch.tensor([prompt.input_ids], device=self.lm.device)  # (1, T)
        kv = prefix_kv(self.lm.model, ids[:, :-1]) if kv is None else kv
        out, f0, h0 = clean_pass(
            self.lm.model, self.sites, ids[:, -1:], cache=DynamicCache(kv)
        )  # (layers, neurons|hidden)
        letter_probs = out.logits[0, -1].float().softmax(-1)[list(prompt.letter_ids)]  # (options,)
        return CleanState(prompt, ids, kv, f0, h0, letter_probs)

    def chunk_ig(self, state: CleanState, chunk: range) -> torch.Tensor:
        """(chunk, neurons) float32 IG of the chunk's layers: their m scaled copies each in one packed pass."""
        model, steps, ids = self.lm.model, self.settings.steps, state.ids
        prefix, f0 = ids.shape[1] - 1, state.f0
        alphas, weights = quadrature(self.settings, f0.dtype, f0.device)  # (m,), (m,)
        a, n = chunk.start, len(chunk) * steps
        xs = [(alphas[:, None] * f0[layer]).requires_grad_() for layer in chunk]  # chunk x (m, neurons)

        def patch(layer: int, f: torch.Tensor) -> torch.Tensor:  # f: (1, rows, neurons), this layer's copies last
            return torch.cat([f[:, : (layer - a) * steps], xs[layer - a][None]], dim=1)

        with (
            enter_at_layer(self.blocks, state.h0, chunk, steps, prefix),
            patch_ffn(model, patch, layers=list(chunk), sites=self.sites),
            packed_attention(model),
        ):
            logits = model(
                input_ids=ids[:, -1:].expand(1, n),
                position_ids=torch.full((1, n), prefix, device=ids.device),
                attention_mask=packed_mask(model.config, [prefix], [0] * n, f0.dtype, ids.device),
                past_key_values=DynamicCache(state.kv),
                use_cache=True,
            ).logits.squeeze(0)  # (n, vocab); a view, so its backward copies nothing
        p = TargetProbability.apply(logits, state.prompt.target_id).sum()
        grads = torch.autograd.grad(p, xs)  # chunk x (m, neurons)
        return (f0[chunk] * torch.stack([weights @ g for g in grads])).float()  # (chunk, neurons)

    def attribute_top_down(self, query: Query, block: int = 4) -> Generator[PartialAttribution, None, None]:
        """The query's attribution `block` layers at a time from the top down, each step with the IG so far (layers not
        yet attributed are 0); the last step equals `attribute()`.

        The top layers come first because they are the cheapest (their scaled copies pass through few layers) and on
        Qwen2.5-Coder-1.5B hold most QR neurons (92% in layers 16-27), so a live view has candidates early.
        """
        start = time.perf_counter()
        prompts = self.prompts(query)
        cache = prefix_cache(self.lm, prompts, self.stems)  # every prompt's prefix in one forward
        states = [self.clean_state(prompt, cache.prompt(i)) for i, prompt in enumerate(prompts)]
        ig = torch.zeros((len(prompts), *states[0].f0.shape), dtype=torch.float32)  # (templates, layers, neurons)
        per = max(1, min(block, self.max_copies // self.settings.steps))
        n = len(self.sites)
        for top in range(n, 0, -per):
            chunk = range(max(0, top - per), top)
            for t, state in enumerate(states):
                ig[t, chunk] = self.chunk_ig(state, chunk).cpu()
            per_prompt = [
                (ig[t].numpy().copy(), s.f0.float().cpu().numpy(), s.letter_probs.cpu().numpy())
                for t, s in enumerate(states)
            ]
            yield PartialAttribution(self._result(query, prompts, per_prompt, start), range(chunk.start, n))

    @property
    def at_clean_point(self) -> bool:
        """Whether Eq. 5 has the single point alpha = 1 (`settings.GRADIENT_X_ACTIVATION`, the preview)."""
        return self.settings.steps == 1 and self.settings.riemann == "right"

    def gradient_x_activation(self, prompts: list[ChoicePrompt]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """`ig_prompt` of each prompt at the single point alpha = 1, all prompts in one batch.

        There every layer's scaled copy is the clean run itself, so one row per prompt does: a zero offset added to
        every layer's f gives dP/df of all layers in one backward, each through the layers above it. The prompts go
        left-padded in one batch, so the weights are read once for all of them.
        """
        model, device = self.lm.model, self.lm.device
        lengths = [len(p.input_ids) for p in prompts]
        width, pad = max(lengths), self.lm.tokenizer.pad_token_id or 0
        ids = torch.tensor([[pad] * (width - n) + list(p.input_ids) for p, n in zip(prompts, lengths)], device=device)
        mask = torch.tensor([[0] * (width - n) + [1] * n for n in lengths], device=device)  # (prompts, width)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (prompts, width)
        cache = DynamicCache(prefix_kv(model, ids[:, :-1], attention_mask=mask[:, :-1], position_ids=positions[:, :-1]))
        offsets: dict[int, torch.Tensor] = {}  # layer -> (prompts, 1, neurons) zeros, the leaves
        f_rec: dict[int, torch.Tensor] = {}

        def add_offset(layer: int, f: torch.Tensor) -> torch.Tensor:  # f: (prompts, 1, neurons)
            f_rec[layer] = f[:, -1].detach()
            offsets[layer] = torch.zeros_like(f, requires_grad=True)
            return f + offsets[layer]

        with patch_ffn(model, add_offset, sites=self.sites):
            logits = model(
                ids[:, -1:], attention_mask=mask, position_ids=positions[:, -1:], past_key_values=cache, use_cache=True
            ).logits[:, -1]  # (prompts, vocab)
        p = torch.stack([TargetProbability.apply(logits[i : i + 1], q.target_id).sum() for i, q in enumerate(prompts)])
        p = p.sum()  # the prompts' target probabilities: each prompt's gradient is its own
        grads = torch.autograd.grad(p, [offsets[s.layer] for s in self.sites])  # layers x (prompts, 1, neurons)
        f0 = torch.stack([f_rec[s.layer] for s in self.sites], dim=1)  # (prompts, layers, neurons)
        ig = (f0 * torch.stack([g[:, -1].to(f0.device) for g in grads], dim=1)).float()  # (prompts, layers, neurons)
        probs = logits.detach().float().softmax(-1)  # (prompts, vocab)
        return [
            (ig[i].cpu().numpy(), f0[i].float().cpu().numpy(), probs[i, list(q.letter_ids)].cpu().numpy())
            for i, q in enumerate(prompts)
        ]


def answer_activation(lm: LoadedModel, attr: NeuronAttribution, prompts) -> np.ndarray:
    """(layers, neurons) activation f at the answer position, mean over the prompts."""
    return np.mean(
        [
            clean_pass(lm.model, attr.sites, torch.tensor([p.input_ids], device=lm.device))[1].float().cpu().numpy()
            for p in prompts
        ],
        axis=0,
    )
