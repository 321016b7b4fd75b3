"""A hand-computed five-query table of NA rows (neurons A..E of a 2 x 3 model) shared by the QRNCA tests."""

from math import log

import pandas as pd

# Neurons A..E of a 2-layer x 3-neuron model.
A, B, C, D, E = (0, 0), (0, 1), (1, 0), (1, 1), (1, 2)
# Five queries (|C| = 5); cluster counts A 3, B 2, C 2, D 2, E 1 (q1's E is only above the floor).
ROWS = [
    ("q1", A, 1.0, True),
    ("q1", B, 0.6, True),
    ("q1", C, 0.3, True),
    ("q1", E, 0.1, False),
    ("q2", A, 1.0, True),
    ("q2", D, 0.5, True),
    ("q3", B, 1.0, True),
    ("q3", D, 0.9, True),
    ("q4", E, 1.0, True),
    ("q4", A, 0.5, True),
    ("q5", C, 1.0, True),
]
GROUPS = {"q1": "g1", "q2": "g1", "q3": "g2", "q4": "g2", "q5": "g2"}
ICA_A, ICA_BCD, ICA_E = log(5 / 4), log(5 / 3), log(5 / 2)


def sparse_table(rows=ROWS) -> pd.DataFrame:
    """The rows as qrnca.sparsify lays them out."""
    return pd.DataFrame(
        {
            "query_id": [r[0] for r in rows],
            "layer": [r[1][0] for r in rows],
            "neuron": [r[1][1] for r in rows],
            "na": [r[2] for r in rows],
            "in_cluster": [r[3] for r in rows],
        }
    )
