"""The Search page's answer time on the shipped runs (issue 27: within a second), printed by `qrn bench features`: the
whole page re-run through streamlit's AppTest after a new search is typed, by question text and by vocabulary token,
each text one that no cache has seen; the run's model is loaded and its queries read by a first search, not timed."""

from __future__ import annotations

from pathlib import Path
import tempfile

import pandas as pd

from explorer.bench import APP, _env, _rerun_ms
from qrcore import store
from qrcore.store.shipped import load_shipped_runs

TARGET_MS = 1000.0
QUESTIONS = ["capital", "born in", "language", "river", "speak", "element", "who", "what is"]
TOKENS = [" Paris", " London", " water", " king", " gold", " music", " science", " English"]


def bench_search(repeats: int = 5) -> pd.DataFrame:
    """Per shipped run: median milliseconds of the Search page answering a question search and a token search."""
    from streamlit.testing.v1 import AppTest

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        db = str(Path(tmp) / "qrn.duckdb")
        load_shipped_runs(db)
        with store.connect(db, read_only=True) as con:
            runs = store.list_runs(con)[["name", "model"]].itertuples(index=False)
        for run, model in runs:
            with _env(QRN_DB=db, QRN_SHIPPED="0", QRN_MODEL=model):
                at = AppTest.from_file(str(APP), default_timeout=600)
                at.query_params.update(model=model, run=run, q="warm")
                at.run()
                at.switch_page("sections/search.py").run()
                box = lambda: at.text_input(key="q")  # noqa: E731 (the widget is found anew after each run)
                question = _rerun_ms(at, lambda k: box().set_value(QUESTIONS[k % len(QUESTIONS)]), repeats, "search")
                at.radio(key="by").set_value("token").run()  # loads the model
                token = _rerun_ms(at, lambda k: box().set_value(TOKENS[k % len(TOKENS)]), repeats, "search")
            rows.append({"run": run, "question_ms": question, "token_ms": token})
    table = pd.DataFrame(rows).assign(target_ms=TARGET_MS)
    return table.assign(
        within=(table[["question_ms", "token_ms"]].max(axis=1) < TARGET_MS).map({True: "yes", False: "no"})
    )
