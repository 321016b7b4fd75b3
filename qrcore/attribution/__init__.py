"""Stage 3, the attribution: NA by integrated gradients (Eq. 5), its slow oracle, mixed precision, result records."""
