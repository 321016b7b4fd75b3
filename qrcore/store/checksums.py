"""DuckDB's block checksums, verified for every block of a store file before anything is written to it.

DuckDB checks a block's checksum only when it reads the block, so a store with random bytes inside a block opens,
takes writes (an import, an evaluation) and fails later, on the first read of that block. Reading every table would
miss the blocks of the primary-key indexes, which DuckDB loads only when a write needs them. So the file's blocks are
checked here, as DuckDB checks each one it reads (`Checksum` in DuckDB's src/common/checksum.cpp): a block starts with
the 8-byte checksum of the rest of it, 5381 XOR the XOR of every 8-byte word of the rest times 0xbf58476d1ce4e5b9.
Measured with duckdb 2.0.0: every block of every store the tests and `qrn bench store` write passes, free blocks
included (DuckDB writes each block whole), and a block with random bytes written into it fails.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

HEADERS = 3 * 4096
"""A DuckDB file starts with a main header and two database headers; block b lies at HEADERS + b * block size."""
CHECKSUM_BYTES = 8
"""The checksum at the start of each block (an unencrypted store's whole block header)."""
SEED = np.uint64(5381)
FACTOR = np.uint64(0xBF58476D1CE4E5B9)
CHUNK_BYTES = 32 << 20
"""How much of the file is read at once (whole blocks), so that a store of any size is checked in bounded memory."""


def failing_block(path: Path, block_size: int) -> int | None:
    """The first whole block of the file whose stored checksum is not DuckDB's checksum of its contents, or None."""
    per_chunk = max(1, CHUNK_BYTES // block_size)
    with path.open("rb") as f:
        f.seek(HEADERS)
        first = 0
        while chunk := f.read(per_chunk * block_size):
            blocks = np.frombuffer(chunk, dtype=np.uint8, count=len(chunk) // block_size * block_size)
            words = blocks.reshape(-1, block_size).view("<u8")  # (blocks, 8-byte words of the block)
            with np.errstate(over="ignore"):
                computed = np.bitwise_xor.reduce(words[:, CHECKSUM_BYTES // 8 :] * FACTOR, axis=1) ^ SEED
            bad = np.flatnonzero(computed != words[:, 0])
            if bad.size:
                return first + int(bad[0])
            first += len(words)
    return None
