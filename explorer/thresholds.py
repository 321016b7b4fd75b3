"""Live thresholds t, u, v (Sec. 4.3-4.5) for the heatmap, common-neuron and export pages: sliders kept in the link
(?t=&u=&v=), and the run's QRNCA results recomputed at them from its stored rows (`qrcore.selection.live`)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from explorer import state, views
from qrcore import store
from qrcore.errors import QRNError
from qrcore.evaluation import run_analyses
from qrcore.selection import analysis, live
from qrcore.selection.live import LiveQRNCA
from qrcore.settings import QRNCASettings

KEYS = ("t", "u", "v")


def _ok(s: QRNCASettings, **value: float) -> bool:
    """Whether the run's stored rows can serve the run's settings with `value` (one of t, u, v) replaced."""
    try:
        live.check_thresholds(s, **{"t": s.t, "u": s.u, "v": s.v, **value})
    except QRNError:
        return False
    return True


def _moved(s: QRNCASettings) -> bool:
    """Whether the thresholds chosen so far (in this session, else in the link) differ from the run's."""
    chosen = {k: st.session_state.get(k, st.query_params.get(k)) for k in KEYS}
    try:
        return any(v is not None and float(v) != getattr(s, k) for k, v in chosen.items())
    except ValueError:
        return True


def _reset(s: QRNCASettings) -> None:
    """Back to the run's own thresholds."""
    st.session_state.update(t=s.t, u=s.u, v=s.v)


def t_slider(s: QRNCASettings, where: Any = st, disabled: bool = False) -> float:
    """The coarse-cluster threshold t (?t=), from the run's storage floor up; the run's t to begin with."""
    return views.synced(
        where.slider,
        "t: coarse cluster, above t x a template's maximum",
        "t",
        min_value=s.floor,
        max_value=live.T_MAX,
        step=0.01,
        value=s.t,
        parse=float,
        dump=lambda x: f"{x:g}",
        valid=lambda x: _ok(s, t=x) and (x == s.t or not disabled),
        among=(
            f"this run's t = {s.t:g} (it keeps no per-template IG, so t stays fixed)"
            if disabled
            else f"a t from {s.floor:g} to {live.T_MAX:g} (the run stores no neurons below t = {s.floor:g})"
        ),
        disabled=disabled,
    )


def controls(run: views.Run) -> LiveQRNCA | None:
    """Sliders for t, u and v (the run's values to begin with) and what they give; None at the run's own settings.

    The stored run is never changed: the results are recomputed from its rows and cached per setting.
    """
    s = state.read(store.run_info, run.id).settings.qrnca
    has_ig = state.read(store.has_template_ig, run.id)
    fixed_t = s.cluster == "template" and not has_ig
    with st.expander("Live thresholds: t, u and v", expanded=_moved(s)):
        left, middle, right = st.columns(3)
        t = t_slider(s, left, disabled=fixed_t)
        u = views.synced(
            middle.slider,
            "u: common neuron, in more than u of all clusters",
            "u",
            min_value=live.U_MIN,
            max_value=1.0,
            step=0.01,
            value=s.u,
            parse=float,
            dump=lambda x: f"{x:g}",
            valid=lambda x: _ok(s, u=x),
            among=f"a u from {live.U_MIN:g} to 1 (a share of all clusters)",
        )
        v = views.synced(
            right.number_input,
            "v: top-v by NAICA",
            "v",
            min_value=1,
            max_value=live.V_MAX,
            step=1,
            value=s.v,
            parse=int,
            valid=lambda x: _ok(s, v=x),
            among=f"a whole v from 1 to {live.V_MAX}",
        )
        st.caption(_limits(s, has_ig, fixed_t))
        try:
            result = state.read(run_analyses.qrnca_at, run.id, t, u, int(v))
        except QRNError as err:
            st.error(str(err))
            return None
        base = state.read(run_analyses.qrnca_at, run.id, s.t, s.u, s.v)
        columns = st.columns([1, 1, 1, 1], vertical_alignment="bottom")
        columns[0].metric("Common neurons (Table 3)", len(result.common), len(result.common) - len(base.common))
        columns[1].metric(
            "QR neurons per query, mean",
            f"{result.qr_per_query.mean():.1f}",
            f"{result.qr_per_query.mean() - base.qr_per_query.mean():+.1f}",
        )
        columns[2].metric("Queries without QR neurons", int((result.qr_per_query == 0).sum()))
        columns[3].button("Back to the run's thresholds", on_click=_reset, args=(s,))
    return None if (t, u, int(v)) == (s.t, s.u, s.v) else result


def _limits(s: QRNCASettings, has_ig: bool, fixed_t: bool) -> str:
    """What the stored rows allow, in one caption."""
    run = f"The run was computed at t = {s.t:g}, u = {s.u:g}, v = {s.v}. "
    if fixed_t:
        return run + (
            "t stays fixed: this run keeps no per-template IG (stored before store schema 2), so its "
            "clusters cannot be formed again; u and v can change."
        )
    how = (
        "per template, from the stored template IG"
        if s.cluster == "template"
        else (
            "on the summed scores"
            + (
                ""
                if has_ig
                else " (this run keeps NA only; per-template thresholds need a run stored with store schema 2)"
            )
        )
    )
    return run + (
        f"t goes down to the storage floor {s.floor:g}: below it the store holds no rows to form clusters "
        f"from. Clusters are formed {how}. Nothing stored changes."
    )


def heatmap(result: LiveQRNCA, group: str, run: views.Run) -> np.ndarray:
    """Fig. 5 map of `group` at the live thresholds, (layers, neurons)."""
    return analysis.to_dense(result.heat.loc[result.heat["group_name"] == group], run.n_layers, run.n_neurons)


def query_rows(result: LiveQRNCA, query_id: str) -> pd.DataFrame:
    """One query's rows at the live thresholds, as `run_analyses.query_neurons` gives them at the run's."""
    rows = result.rows.loc[result.rows["query_id"] == query_id].drop(columns="query_id")
    return rows.sort_values(["naica", "layer", "neuron"], ascending=[False, True, True], ignore_index=True)
