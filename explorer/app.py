"""QR Neuron Explorer: `streamlit run explorer/app.py` — browse and edit the query-relevant neurons of a run."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from explorer import state, views
from qrcore.errors import QRNError

PAGES = Path(__file__).parent / "sections"

st.set_page_config(page_title="QR Neuron Explorer", page_icon="🧠", layout="wide")  # an emoji: no font is fetched
views.keep_synced()
pages = [
    st.Page(PAGES / "heatmaps.py", title="Heatmaps", icon=":material/grid_on:", default=True),
    st.Page(PAGES / "overlap.py", title="Overlap and layers", icon=":material/join_inner:", url_path="overlap"),
    st.Page(PAGES / "common.py", title="Common neurons", icon=":material/hub:", url_path="common"),
    st.Page(PAGES / "lab.py", title="Query lab", icon=":material/science:", url_path="lab"),
    st.Page(PAGES / "methods.py", title="Methods", icon=":material/leaderboard:", url_path="methods"),
    st.Page(PAGES / "compare.py", title="Compare models", icon=":material/compare:", url_path="compare"),
    st.Page(PAGES / "contrast.py", title="Contrasts", icon=":material/contrast:", url_path="contrast"),
    st.Page(PAGES / "neuron.py", title="Neuron card", icon=":material/memory:", url_path="neuron"),
    st.Page(PAGES / "search.py", title="Search", icon=":material/search:", url_path="search"),
    st.Page(PAGES / "consistency.py", title="Template consistency", icon=":material/rule:", url_path="consistency"),
    st.Page(PAGES / "export.py", title="Take it away", icon=":material/download:", url_path="export"),
    st.Page(PAGES / "data.py", title="Data and models", icon=":material/database:", url_path="data"),
]
navigation = st.navigation(pages)
st.sidebar.caption(f"Store {views.md(state.db_path())}")
try:
    state.startup(state.db_path())
    views.page_path_notice(navigation, [*(p.url_path for p in pages), "heatmaps"])  # /heatmaps: the default page
    views.pick_model()
    views.search_box()
    navigation.run()
except QRNError as err:
    st.error(views.md(err))
