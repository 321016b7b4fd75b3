"""The query lab's live integration rule per model: the cheapest rule whose QR neurons match the authors' rule,
as `qrn bench quadrature --save` measured it (issue 26). Models without a measurement use the authors' rule."""

from __future__ import annotations

from dataclasses import dataclass
import json
from pathlib import Path

from qrcore.settings import AttributionSettings

LIVE_RULES = Path(__file__).resolve().parent.parent / "data" / "live_rules.json"
"""Model name -> {"riemann", "steps", "why"}: written by `qrn bench quadrature --save`, shipped with the package."""
AUTHORS = AttributionSettings(16, "linspace")


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


def live_rule(model: str, path: Path = LIVE_RULES) -> LiveRule:
    """The measured live rule of the model named `model`, or the authors' rule with the reason."""
    rules = json.loads(path.read_text("utf-8")) if path.is_file() else {}
    if model not in rules:
        return LiveRule(AUTHORS, f"the authors' rule (linspace 16): no live rule was measured for {model}")
    entry = rules[model]
    return LiveRule(AttributionSettings(int(entry["steps"]), str(entry["riemann"])), str(entry["why"]))


def save_live_rule(model: str, rule: LiveRule, path: Path = LIVE_RULES) -> None:
    """Record the model's measured live rule (other models' entries kept), written whole then moved into place."""
    rules = json.loads(path.read_text("utf-8")) if path.is_file() else {}
    rules[model] = {"riemann": rule.settings.riemann, "steps": rule.settings.steps, "why": rule.why}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(rules, indent=1, sort_keys=True) + "\n", "utf-8")
    tmp.replace(path)
