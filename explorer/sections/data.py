"""Data and models: the store's runs and models, importing a dataset file, and starting a run."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from explorer import state, views
from qrcore.data.datasets import BUILTIN
from qrcore.errors import QRNError
from qrcore.settings import RunSettings

# Session-state list of the datasets imported in this session (offered for a run before one uses them).
IMPORTED = "imported_datasets"

st.title("Data and models")
name = views.model()
st.caption(
    f"Store {views.md(state.db_path())} (set `QRN_DB` to change it) · runs started here use **{views.md(name)}**, "
    "the model picked in the sidebar."
)
runs = views.list_runs()

st.subheader("Runs")
if runs.empty:
    st.info("No runs yet: start one below or with `qrn run`.")
else:
    settings = runs["settings_json"].map(lambda text: RunSettings.from_json(str(text)).summary())
    st.dataframe(
        runs.drop(columns=["run_id", "settings_json"]).assign(settings=settings),
        hide_index=True,
        width="stretch",
        column_config={
            "n_done": st.column_config.NumberColumn("queries done"),
            "n_queries": st.column_config.NumberColumn("queries"),
        },
    )
    st.subheader("Models")
    models = runs.groupby("model").agg(
        runs=("name", "count"), datasets=("dataset", lambda d: ", ".join(sorted(set(d))))
    )
    models["installed here"] = [state.missing(m) or "yes" for m in models.index]
    st.dataframe(models, width="stretch")

st.subheader("Import a dataset")
st.caption(
    "The paper's JSON ({id: {sentences, obj_label, relation_name}}) or an MMLU-style CSV "
    "(question, A, B, C, D, answer[, group])."
)
upload = st.file_uploader("Dataset file", type=["json", "csv"], key="upload")
dataset_name = st.text_input("Dataset name", placeholder="the file name without extension", key="dataset_name")
if st.button("Import", disabled=upload is None) and upload is not None:
    imported = dataset_name.strip() or Path(upload.name).stem
    try:
        n = state.import_dataset(upload.name, upload.getvalue(), imported)
        st.session_state.setdefault(IMPORTED, []).append(imported)
        st.success(f"Stored {n} queries as dataset {views.md(repr(imported))}.")
    except QRNError as err:
        st.error(views.md(err))

st.subheader("Start a run")
datasets = list(dict.fromkeys([*BUILTIN, *runs["dataset"], *st.session_state.get(IMPORTED, [])]))
left, middle, right = st.columns([2, 1, 2])
dataset = left.selectbox("Dataset", datasets, key="run_dataset")
per_group = middle.number_input("Queries per group (0: all)", min_value=0, value=0, step=5, key="per_group")
run_name = right.text_input("Run name", placeholder="derived from model and dataset", key="run_name")
st.caption(
    f"Attributes every query with {views.md(name)} (on a 2-core CPU about 5 s a query for smollm2, 30 s or more for "
    "qwen2.5-coder-1.5b) and computes the run's QR neurons; a run that stopped resumes where it was."
)
if st.button("Start run", type="primary"):
    bar = st.progress(0.0, "Starting…")
    try:
        state.start_run(
            name,
            dataset,
            run_name.strip() or None,
            int(per_group) or None,
            lambda done, total, query_id: bar.progress(done / total, f"{done} of {total} · {views.md(query_id)}"),
        )
        st.success("Run finished; pick it in the sidebar.")
    except QRNError as err:
        st.error(views.md(err))
    finally:
        bar.empty()
