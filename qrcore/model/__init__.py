"""Stage 1, the model: loading (embedded, GGUF, folder, hub), identity, tiny test models, FFN sites, FLOP counts."""
