"""Stage 5, the editing (Sec. 5): neurons scaled at the answer position, edit files, vocabulary projection."""
