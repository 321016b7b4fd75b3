"""Stage 7, the runs: a dataset attributed into the store, resumably, in one process or data-parallel (shards)."""
