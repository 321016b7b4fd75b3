"""The query lab's live integration rule per model: the cheapest rule whose QR neurons match the authors' rule,
as `qrn bench quadrature --save` measured it (issue 26), and the model's measured agreement of bfloat16 products with
float32 (`qrn bench precision --save`). Models without a measurement use the authors' rule."""

from __future__ import annotations

from dataclasses import asdict, dataclass
import json
from pathlib import Path

from qrcore.settings import AttributionSettings

LIVE_RULES = Path(__file__).resolve().parent.parent / "data" / "live_rules.json"
"""Model name -> {"riemann", "steps", "why"} (`qrn bench quadrature --save`) and "bf16": {"qr_jaccard",
"cluster_jaccard", "measured"} (`qrn bench precision --save`); shipped with the package."""
AUTHORS = AttributionSettings(16, "linspace")
LIVE_JACCARD = 0.95
"""The live criterion's bar: a cheaper computation's QR neurons match the reference's with at least this mean Jaccard."""


def label(a: AttributionSettings) -> str:
    """A rule's name in tables and on the page: 'linspace 16', 'gauss_legendre 8'."""
    return f"{a.riemann} {a.steps}"


@dataclass(frozen=True)
class LiveRule:
    """The rule the query lab attributes a custom question with first, and why."""

    settings: AttributionSettings
    why: str
    """One line: what was measured (or that nothing was), shown beside the lab's result."""

    @property
    def is_authors(self) -> bool:
        """Whether it is the authors' rule itself (then the lab has nothing to recompute)."""
        return self.settings == AUTHORS


@dataclass(frozen=True)
class Bf16Agreement:
    """How far bfloat16 products moved a model's results from float32 (`qrn bench precision`)."""

    qr_jaccard: float
    """Mean Jaccard of the queries' QR neurons, bfloat16 products against float32."""
    cluster_jaccard: float
    """The same for the coarse clusters."""
    measured: str
    """One line: the command, the queries and the machine it was measured on."""

    def __post_init__(self) -> None:
        if not (0 <= self.qr_jaccard <= 1 and 0 <= self.cluster_jaccard <= 1):
            raise ValueError(f"Jaccard values lie in [0, 1] (got {self.qr_jaccard}, {self.cluster_jaccard})")


def _entries(path: Path | None) -> dict[str, dict]:
    """The file's entries by model name (none when it does not exist)."""
    path = path or LIVE_RULES
    return json.loads(path.read_text("utf-8")) if path.is_file() else {}


def live_rule(model: str, path: Path | None = None) -> LiveRule:
    """The measured live rule of the model named `model`, or the authors' rule with the reason (path: LIVE_RULES)."""
    entry = _entries(path).get(model, {})
    if "riemann" not in entry:
        return LiveRule(AUTHORS, f"the authors' rule (linspace 16): no live rule was measured for {model}")
    return LiveRule(AttributionSettings(int(entry["steps"]), str(entry["riemann"])), str(entry["why"]))


def bf16_agreement(model: str, path: Path | None = None) -> Bf16Agreement | None:
    """The model's measured agreement of bfloat16 products with float32, or None where it was never measured."""
    entry = _entries(path).get(model, {}).get("bf16")
    return None if entry is None else Bf16Agreement(**entry)


def save_live_rule(model: str, rule: LiveRule, path: Path | None = None) -> None:
    """Record the model's measured live rule (its other entries and other models' kept)."""
    _save(model, {"riemann": rule.settings.riemann, "steps": rule.settings.steps, "why": rule.why}, path)


def save_bf16_agreement(model: str, agreement: Bf16Agreement, path: Path | None = None) -> None:
    """Record the model's measured bfloat16 agreement (its other entries and other models' kept)."""
    _save(model, {"bf16": asdict(agreement)}, path)


def _save(model: str, fields: dict, path: Path | None) -> None:
    """Merge `fields` into the model's entry, the file written whole then moved into place."""
    path = path or LIVE_RULES
    rules = _entries(path)
    rules[model] = {**rules.get(model, {}), **fields}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(rules, indent=1, sort_keys=True) + "\n", "utf-8")
    tmp.replace(path)
