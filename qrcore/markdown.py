"""User text in GitHub Markdown files (report.md) that shows as written: never a link, an image, HTML or formatting."""

from __future__ import annotations

import re

MARKUP = re.compile(r"[\\`*_\[\]<>|!&~#$]")
"""The characters with which GitHub Markdown starts markup inside a line: code, emphasis, links and images, HTML and
entities, table cells, strike-through, math; each is shown as itself when backslash-escaped."""
AUTOLINK = re.compile(r"https?(?=:)|www(?=\.)|@", re.IGNORECASE)
"""Where GitHub Markdown starts a link from plain (even escaped) text: a URL, a www. address, an e-mail address."""
WORD_JOINER = "\u2060"
"""An invisible character that, put after an AUTOLINK match, keeps the text from becoming a link."""


def escaped(text: object) -> str:
    """`text` as one line of GitHub Markdown (a title or a table cell) that shows exactly it."""
    unlinked = AUTOLINK.sub(lambda m: m[0] + WORD_JOINER, " ".join(str(text).splitlines()))
    return MARKUP.sub(r"\\\g<0>", unlinked)
