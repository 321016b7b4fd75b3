"""The query lab's edit beyond one multiplier: a slider per neuron (in the link as ?each=3:17*0,5:9*2.5), the edit as
a JSON or CSV file to take away, loading such a file back, and neurons handed over from a neuron card."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from explorer import state, views
from qrcore.editing import edits
from qrcore.errors import QRNError

Neuron = tuple[int, int]
ADDED = "lab_added"
"""Session key: the neuron label a neuron card hands to the lab as its edit set, taken when the lab next draws."""
GO_TO_LAB = "go_to_lab"
"""Session key: set by a card's button, so that its page switches to the lab."""
EACH = "each"
"""Session key and link parameter of the per-neuron multipliers (label -> multiplier)."""
LOAD_ERROR = "edit_load_error"
MULT_MAX = 4.0
"""The sliders' largest multiplier."""


def edit_in_lab(neuron: Neuron) -> None:
    """Button callback: hand the neuron to the lab, to be its whole edit set, and go there."""
    st.session_state[ADDED] = [views.neuron_label(neuron)]
    st.session_state[GO_TO_LAB] = True


def take_added() -> list[str]:
    """The labels a card handed over, which replace the lab's selection (its own multipliers forgotten); used up."""
    clear()
    return st.session_state.pop(ADDED)


def _each() -> dict[str, float]:
    """The per-neuron multipliers of this session, seeded once from the link (entries it cannot read are left out)."""
    if EACH not in st.session_state:
        each = {}
        for item in filter(None, st.query_params.get(EACH, "").split(",")):
            label, _, value = item.partition("*")
            try:
                views.parse_neuron(label)
                if 0.0 <= float(value) <= MULT_MAX:
                    each[label] = float(value)
            except ValueError:
                continue
        st.session_state[EACH] = each
    return st.session_state[EACH]


def _moved(label: str) -> None:
    """Slider callback: the neuron now has a multiplier of its own."""
    _each()[label] = st.session_state[f"each:{label}"]


def per_neuron(neurons: list[Neuron], mult: float) -> dict[Neuron, float]:
    """A slider per selected neuron, beside the selection's multiplier; each neuron's multiplier.

    A neuron follows `mult` until its own slider moves; the moved ones are kept in the link.
    """
    each = _each()
    labels = [views.neuron_label(n) for n in neurons]
    for stale in set(each) - set(labels):
        del each[stale]
    with st.expander(
        f"One multiplier per neuron ({len(each)} of {len(labels)} set apart from the selection's)", expanded=bool(each)
    ):
        columns = st.columns(4)
        for i, label in enumerate(labels):
            key = f"each:{label}"
            st.session_state[key] = each.get(label, mult)
            columns[i % 4].slider(label, 0.0, MULT_MAX, step=0.1, key=key, on_change=_moved, args=(label,))
        st.button("All follow the selection's multiplier", on_click=each.clear, disabled=not each)
    if each:
        st.query_params[EACH] = ",".join(f"{label}*{m:g}" for label, m in each.items())
    else:
        st.query_params.pop(EACH, None)
    return {n: each.get(label, mult) for n, label in zip(neurons, labels)}


def clear() -> None:
    """Forget the per-neuron multipliers (the lab's reset)."""
    st.session_state[EACH] = {}


def _load(name: str) -> None:
    """Uploader callback: an edit file's neurons and multipliers (or a neuron set's neurons) become the lab's edit.

    A bad file leaves the edit as it was and one line says why.
    """
    upload = st.session_state.get("edit_file")
    if upload is None:
        return
    try:
        kind, meta, table = edits.parse(upload.getvalue().decode("utf-8"), "the file")
        edit = edits.to_edit(kind, meta, table, None if kind == edits.EDIT else 1.0, "the file")
        edits.check_model(edit, state.fingerprint(name), name)
        state.check(name, list(edit))
        over = [f"{views.neuron_label(n)} x {m:g}" for n, m in edit.items() if m > MULT_MAX]
        if over:
            raise QRNError(
                f"neuron {over[0]} is beyond the lab's largest multiplier {MULT_MAX:g}; lower it in the "
                "file, or apply the file in Python with qrcore.editing.edits.load_edit."
            )
    except UnicodeDecodeError:
        st.session_state[LOAD_ERROR] = "the file is not UTF-8 text; load a JSON or CSV file exported by the explorer."
        return
    except QRNError as err:
        st.session_state[LOAD_ERROR] = str(err)
        return
    labels = [views.neuron_label(n) for n in edit]
    st.session_state["neurons"] = labels
    if kind == edits.EDIT:
        same = len(set(edit.values())) == 1
        st.session_state["mult"] = next(iter(edit.values())) if same else 1.0
        st.session_state[EACH] = {} if same else dict(zip(labels, edit.values()))


def take_away(name: str, edit: dict[Neuron, float], names: list[str]) -> None:
    """Download buttons for the current edit (JSON, CSV), named by model and `names` (run, query), and an uploader
    that loads one back."""
    table = pd.DataFrame([(l, n, m) for (l, n), m in sorted(edit.items())], columns=["layer", "neuron", "multiplier"])
    meta = {"model": name, "model_fingerprint": state.fingerprint(name)}
    left, middle, right = st.columns([1, 1, 2], vertical_alignment="bottom")
    views.download_buttons((left, middle), "Edit as", edits.EDIT, meta, table, disabled=not edit, names=[name, *names])
    right.file_uploader(
        "Load an edit or neuron-set file", type=["json", "csv"], key="edit_file", on_change=_load, args=(name,)
    )
    if LOAD_ERROR in st.session_state:
        st.error(views.md(st.session_state.pop(LOAD_ERROR)))
    st.caption(
        "An edit file names the model by its fingerprint; load it in Python with "
        "`qrcore.editing.edits.load_edit(path)` and apply it with `qrcore.editing.scaling.edited(lm, edit)`."
    )
