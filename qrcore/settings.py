"""Settings of every step, as frozen dataclasses that check their own values; a run's settings are part of its cache key.

Where the paper's text and the authors' released code differ, the code's choice is the default (it produced the
published numbers) and the text's is a setting; see the README section "The paper's text and its code".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
import json

from qrcore.errors import QRNError

RIEMANN = ("linspace", "right", "gauss_legendre")
"""The quadrature rule of Eq. 5's integral over [0, 1]: "linspace" = linspace(0, 1, m), equal weights, as in the authors'
code; "right" = k/m, k = 1..m, equal weights, as in the text; "gauss_legendre" = m Gauss-Legendre nodes and weights
(captum's default), exact for polynomials of degree 2m - 1, used as the near-exact reference and as a cheaper rule."""
CLUSTERS = ("template", "sum")
"""Coarse cluster (Sec. 4.3): "template" = each template thresholded at t x its own maximum, the union kept, only
above-threshold scores summed (the authors' code); "sum" = the templates' scores summed first, the sum thresholded."""
NORMALISERS = ("cluster_sum", "all_sum", "max_abs")
"""Z of Eq. 5: "cluster_sum" = the sum of the cluster's scores (the authors' code); "all_sum" = the sum over all
neurons (the text); "max_abs" = the largest absolute score (this project before it followed the code)."""
METHODS = ("qrnca", "random", "activation", "kn", "qrnca_no_ica", "qrnca_with_common")
"""QRNCA, the Sec. 5.1 baselines (random, activation, kn = Knowledge Neuron*) and two ablations: the ids a run's
QR neurons are stored under."""
LEGACY = {"attribution": {"riemann": "right"}, "qrnca": {"cluster": "sum", "z": "max_abs"}}
"""What a run stored before these settings existed computed; `RunSettings.from_json` fills them in for it."""


def _check(ok: bool, message: str) -> None:
    """Raise QRNError(message) unless ok."""
    if not ok:
        raise QRNError(message)


@dataclass(frozen=True)
class PromptSettings:
    """How a query becomes multi-choice prompts (paper Sec. 4.1)."""

    templates: int = 3
    """Number of prompt templates per query (the paper uses 3)."""
    seed: int = 0
    """Seed of the option shuffling and distractor sampling; the same seed gives the same prompts."""

    def __post_init__(self) -> None:
        _check(self.templates >= 1, f"templates must be at least 1 (got {self.templates}).")


@dataclass(frozen=True)
class AttributionSettings:
    """Integrated-gradients neuron attribution (paper Eq. 5)."""

    steps: int = 16
    """Points m of the integral from 0 to the activation (Riemann steps or Gauss-Legendre nodes)."""
    riemann: str = "linspace"
    """The quadrature rule: which m points of [0, 1] the integral is sampled at, and their weights (one of RIEMANN)."""

    def __post_init__(self) -> None:
        _check(self.riemann in RIEMANN, f"riemann must be one of {', '.join(RIEMANN)} (got {self.riemann!r}).")
        least = 2 if self.riemann == "linspace" else 1
        _check(self.steps >= least, f"steps must be at least {least} with riemann={self.riemann} (got {self.steps}).")


GRADIENT_X_ACTIVATION = AttributionSettings(steps=1, riemann="right")
"""The instant preview: Eq. 5 with the single point alpha = 1, i.e. f * dP/df at the answer position (one forward and
one backward), the first-order approximation attribution patching uses. It runs through the same engine as IG."""


@dataclass(frozen=True)
class QRNCASettings:
    """Cluster-based selection of query-relevant neurons (paper Sec. 4.3-4.5)."""

    t: float = 0.2
    """Coarse cluster threshold: keep neurons whose score exceeds t times the maximum score."""
    u: float = 0.3
    """Common-neuron threshold: a neuron in more than u of all clusters is common."""
    v: int = 20
    """Top-v neurons by NA x ICA are taken before common neurons are removed."""
    floor: float = 0.05
    """Sparse storage: besides the cluster, a neuron above floor times a template's maximum is kept in the store."""
    cluster: str = "template"
    """How the coarse cluster is formed (one of CLUSTERS)."""
    z: str = "cluster_sum"
    """The normalisation factor Z of NA (one of NORMALISERS)."""

    def __post_init__(self) -> None:
        _check(0 < self.t < 1, f"t must be between 0 and 1 (got {self.t}).")
        _check(0 < self.u <= 1, f"u must be above 0 and at most 1 (got {self.u}).")
        _check(self.v >= 1, f"v must be at least 1 (got {self.v}).")
        _check(0 < self.floor <= self.t, f"floor must be above 0 and at most t (got {self.floor}).")
        _check(self.cluster in CLUSTERS, f"cluster must be one of {', '.join(CLUSTERS)} (got {self.cluster!r}).")
        _check(self.z in NORMALISERS, f"z must be one of {', '.join(NORMALISERS)} (got {self.z!r}).")


@dataclass(frozen=True)
class RunSettings:
    """Everything that decides a run's numbers, hashed into its cache key."""

    prompt: PromptSettings = PromptSettings()
    attribution: AttributionSettings = AttributionSettings()
    qrnca: QRNCASettings = QRNCASettings()

    def summary(self) -> str:
        """One readable line of the settings that decide the numbers, for reports and the explorer."""
        p, a, q = self.prompt, self.attribution, self.qrnca
        return (
            f"{p.templates} templates (seed {p.seed}); IG m={a.steps} ({a.riemann} points); cluster t={q.t} "
            f"({q.cluster}), Z={q.z}; common u={q.u}; top-v={q.v}"
        )

    def to_json(self) -> str:
        """Canonical JSON (sorted keys) of all settings, used in cache keys and shard checks."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "RunSettings":
        """Inverse of to_json; a run stored before a setting existed gets the value it was computed with (LEGACY)."""
        d = json.loads(text)
        kinds = {"prompt": PromptSettings, "attribution": AttributionSettings, "qrnca": QRNCASettings}
        return cls(**{name: kind(**{**LEGACY.get(name, {}), **d[name]}) for name, kind in kinds.items()})
