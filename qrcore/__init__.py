"""QR Neuron Explorer engine: QRNCA (Chen, Dejl, Toni, AAAI 2025) for decoder LLMs.

Importing this package loads no model and opens no database; every heavy step lives
in a submodule that is imported when it is used.
"""

__version__ = "0.1.0"
