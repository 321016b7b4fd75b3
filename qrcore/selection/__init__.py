"""Stage 4, the selection: QRNCA (Sec. 4.3-4.5) and its baselines, then the analyses that need no model."""
