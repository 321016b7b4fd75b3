"""`qrn bench explorer`: the explorer's first start and its two speed targets, measured server-side.

A first start loads the shipped runs into a new store (with a progress bar) and draws the heatmap page.
(a) A slider change in the query lab: `letter_probs` of one query's 3 prompts under a 10-neuron edit on the default
model (target: the edit and its control under 300 ms), and the whole lab page re-run after a slider move.
(b) The heatmap page on a synthetic 32 x 11008 store: fetch a group's map, bin it and build the plotly figure
(target under 1 s), and the whole page run through streamlit's AppTest.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
import os
from pathlib import Path
import statistics
import tempfile
import time

from explorer.figures import bin_heatmap, heatmap_figure
from qrbench.store import RUN_NAME, build_synthetic_store, median_ms
from qrcore import store
from qrcore.evaluation import run_analyses

APP = Path(__file__).resolve().parent / "app.py"
EDIT_NEURONS = 10


@contextmanager
def _env(**values: str) -> Iterator[None]:
    """Environment variables set for the block and restored after it."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _rerun_ms(at, move: Callable[[int], object], repeats: int, page: str) -> float:
    """Median milliseconds of an AppTest re-run after move(k) changes a widget, over `repeats` moves."""
    times = []
    for k in range(repeats):
        move(k)
        start = time.perf_counter()
        at.run()
        times.append((time.perf_counter() - start) * 1000.0)
    if at.exception:
        raise RuntimeError(f"{page} failed: {at.exception[0].message}")
    return statistics.median(times)


def bench_first_start() -> dict[str, float]:
    """A first start on a new store: loading the shipped runs alone, and the whole first page (AppTest) with them."""
    from streamlit.testing.v1 import AppTest

    from explorer.state import START_MODEL
    from qrcore.store.shipped import load_shipped_runs

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        load_shipped_runs(str(Path(tmp) / "alone.duckdb"))
        out = {"seed_ms": (time.perf_counter() - start) * 1000.0}
        with _env(QRN_DB=str(Path(tmp) / "qrn.duckdb"), QRN_SHIPPED="1", QRN_MODEL=START_MODEL):
            at = AppTest.from_file(str(APP), default_timeout=300)
            start = time.perf_counter()
            at.run()
            out["first_start_ms"] = (time.perf_counter() - start) * 1000.0
    if at.exception or not at.status:
        raise RuntimeError(
            f"the first start failed: {at.exception[0].message if at.exception else 'no progress shown'}"
        )
    return out


def bench_edit(repeats: int = 7) -> dict[str, float]:
    """(a) letter_probs under a 10-neuron edit of the default model, and the query lab's re-run after a slider move."""
    from streamlit.testing.v1 import AppTest

    from qrcore.attribution.ig import NeuronAttribution
    from qrcore.attribution.prefixes import prefix_cache
    from qrcore.data.queries import make_query
    from qrcore.editing.scaling import letter_probs
    from qrcore.model.load import load_model

    lm = load_model()
    query = make_query("What is the capital of France?", ["Paris", "London", "Berlin", "Madrid"], "Paris")
    prompts = NeuronAttribution(lm).prompts(query)
    edit = {(3 * i, 97 * i): 2.0 for i in range(EDIT_NEURONS)}
    cache = prefix_cache(lm, prompts)
    out = {
        "probs_ms": median_ms(lambda: letter_probs(lm, prompts, edit), repeats),
        "probs_cached_ms": median_ms(lambda: letter_probs(lm, prompts, edit, cache), repeats),
    }
    neurons = ",".join(f"{layer}:{neuron}" for layer, neuron in edit)
    with _env(QRN_MODEL="smollm2", QRN_SHIPPED="0", QRN_DB=os.devnull + ".none"):
        at = AppTest.from_file(str(APP), default_timeout=300)
        at.query_params.update(source="custom", neurons=neurons, mult="1")
        at.run()
        at.switch_page("sections/lab.py").run()
        out["lab_slider_ms"] = _rerun_ms(
            at, lambda k: at.slider(key="mult").set_value(round(0.1 * (k + 1), 1)), repeats, "query lab"
        )
    return out


def bench_heatmap(db_path: str | os.PathLike, repeats: int = 7) -> dict[str, float]:
    """(b) fetch + bin + figure of one group's heatmap of a synthetic 32 x 11008 run, and the whole heatmap page."""
    from streamlit.testing.v1 import AppTest

    if not Path(db_path).exists():
        build_synthetic_store(db_path)
    with store.connect(db_path, read_only=True) as con:
        run_id = store.run_info(con, RUN_NAME).run_id
        group = store.heatmap_groups(con, run_id)[0]

    def fetch_bin_draw() -> None:
        with store.connect(db_path, read_only=True) as con:
            matrix = run_analyses.heatmap(con, run_id, group)
        heatmap_figure(bin_heatmap(matrix), title=group).to_json()

    out = {"heatmap_ms": median_ms(fetch_bin_draw, repeats)}
    with _env(QRN_DB=str(db_path), QRN_SHIPPED="0"):
        at = AppTest.from_file(str(APP), default_timeout=120)
        at.query_params.update(run=RUN_NAME, group=group)
        start = time.perf_counter()
        at.run()
        out["heatmap_page_cold_ms"] = (time.perf_counter() - start) * 1000.0
        out["heatmap_page_ms"] = _rerun_ms(
            at, lambda k: at.slider(key="layers").set_value((k % 4, 31)), repeats, "heatmap page"
        )
    return out


def bench_explorer(db_path: str | os.PathLike | None = None, repeats: int = 7) -> dict[str, float]:
    """Both explorer speed targets, printed as a table.

    `db_path` is a synthetic 32 x 11008 store of `qrbench.store` (built there if missing; default: a temporary
    one, about 10 s to build), not the store of real runs.
    """
    if db_path is None:
        with tempfile.TemporaryDirectory() as tmp:
            return bench_explorer(Path(tmp) / "synthetic.duckdb", repeats)
    result = {**bench_first_start(), **bench_edit(repeats), **bench_heatmap(db_path, repeats)}
    labels = {
        "seed_ms": "first start: the shipped runs loaded into a new store",
        "first_start_ms": "first start: the whole first page (runs loaded, heatmaps, model for hover tokens)",
        "probs_ms": f"letter_probs, 3 prompts, {EDIT_NEURONS}-neuron edit, default model, full prompts (oracle)",
        "probs_cached_ms": "the same with the packed prefix cache (what a slider move runs)",
        "lab_slider_ms": "query lab page re-run after a slider move (edit + control)",
        "heatmap_ms": "heatmap 32 x 11008: fetch + bin + plotly figure",
        "heatmap_page_cold_ms": "heatmap page, first run (cold caches)",
        "heatmap_page_ms": "heatmap page re-run after a layer-range change",
    }
    for key, label in labels.items():
        print(f"{label:<80} {result[key]:8.1f} ms")
    print(f"prefix cache speed-up over full prompts: {result['probs_ms'] / result['probs_cached_ms']:.1f}x")
    return result
