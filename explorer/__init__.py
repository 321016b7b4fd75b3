"""The Streamlit explorer: `app.py` (started by `qrn explore`), its sections (one page each), figures and views over
`qrcore`, and its own benchmark; every st.cache_* wrapper lives in `state.py`."""
