"""Stage 8, the evaluation: the paper's model-based measurements of a finished run (Tables 4, 6, 7), prompt-based
accuracy, and the report that puts them in tables."""
