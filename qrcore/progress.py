"""The one signature of every progress callback in the engine."""

from typing import Callable

Progress = Callable[[int, int, str], object]
"""progress(done, total, what): `done` of `total` steps are finished, `what` names the last one (a query id, a
table, an attribution pass, an edit); what it returns is not used (a Streamlit element, None)."""
