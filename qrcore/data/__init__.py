"""Stage 2, the data: queries (Sec. 4.1), built-in and imported datasets, and the prompts made from them."""
