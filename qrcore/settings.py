"""Settings of every step, as frozen dataclasses; a run's settings are part of its cache key."""

from __future__ import annotations

from dataclasses import asdict, dataclass
import json


@dataclass(frozen=True)
class PromptSettings:
    """How a query becomes multi-choice prompts (paper Sec. 4.1)."""

    templates: int = 3
    """Number of prompt templates per query (the paper uses 3)."""
    seed: int = 0
    """Seed of the option shuffling and distractor sampling; the same seed gives the same prompts."""


@dataclass(frozen=True)
class AttributionSettings:
    """Integrated-gradients neuron attribution (paper Eq. 5)."""

    steps: int = 16
    """Riemann steps m of the integral from 0 to the activation."""


@dataclass(frozen=True)
class QRNCASettings:
    """Cluster-based selection of query-relevant neurons (paper Sec. 4.3-4.5)."""

    t: float = 0.2
    """Coarse cluster threshold: keep neurons whose NA exceeds t times the query's maximum NA."""
    u: float = 0.3
    """Common-neuron threshold: a neuron in more than u of all clusters is common."""
    v: int = 20
    """Top-v neurons by NA x ICA are taken before common neurons are removed."""
    floor: float = 0.05
    """Sparse storage: besides the cluster, NA above floor times the maximum is kept in the store."""


@dataclass(frozen=True)
class RunSettings:
    """Everything that decides a run's numbers, hashed into its cache key."""

    prompt: PromptSettings = PromptSettings()
    attribution: AttributionSettings = AttributionSettings()
    qrnca: QRNCASettings = QRNCASettings()

    def to_json(self) -> str:
        """Canonical JSON (sorted keys) of all settings, used in cache keys and shard checks."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "RunSettings":
        """Inverse of to_json."""
        d = json.loads(text)
        return cls(PromptSettings(**d["prompt"]), AttributionSettings(**d["attribution"]), QRNCASettings(**d["qrnca"]))
