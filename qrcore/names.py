"""Names of runs and datasets: the one rule they follow wherever they enter (run, import, merge, imported exports).

A name becomes a folder name (`qrn report` writes out/<run name>/), a URL value and a table cell, so it is short, one
line, never a path ('/', '.', '..') and made of visible ASCII characters (report.md escapes the Markdown ones). The
brackets, comma and colon are those of a run's selection ("domain[biology:20]@smollm2").
"""

from __future__ import annotations

import re

from qrcore.errors import QRNError

MAX_NAME = 100
"""Most characters in a name."""
NAME_CHARS = r"A-Za-z0-9_.@\[\],:-"
"""A name's characters (a regex class body): ASCII letters and digits, '_', '.', '@', '[', ']', ',', ':', '-'
(ASCII, so that a name of MAX_NAME characters fits a file name's 255 bytes)."""
NAME = re.compile(rf"(?!\.)(?!.*\.\.)[{NAME_CHARS}]{{1,{MAX_NAME}}}")
"""A whole valid name: not starting with '.', no '..'."""
RULE = (
    f"a name is 1 to {MAX_NAME} ASCII letters, digits and the characters _ . @ [ ] , : -, "
    "does not start with '.' and holds no '..'"
)


def check_name(name: str, what: str, fix: str = "choose another name") -> str:
    """`name` if it follows the rule; else a one-line QRNError naming `what` ("run name") and the rule."""
    if NAME.fullmatch(name):
        return name
    shown = repr(name if len(name) <= 40 else name[:40] + "...")
    length = f" ({len(name)} characters)" if len(name) > MAX_NAME else ""
    raise QRNError(f"{what} {shown}{length} is not allowed: {RULE}; {fix}")


def safe_name(text: str) -> str:
    """`text` made a valid name: other characters become '_', leading dots and '..' are cut, at most MAX_NAME kept."""
    name = re.sub(r"\.{2,}", ".", re.sub(rf"[^{NAME_CHARS}]", "_", text)).lstrip(".")[:MAX_NAME]
    return name or "_"
