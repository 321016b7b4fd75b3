"""What a reader sees of a Markdown body, as Streamlit renders it."""

from __future__ import annotations

import html
import re

from markdown_it import MarkdownIt

MARKDOWN = MarkdownIt("commonmark")
"""CommonMark, as Streamlit renders Markdown (without its GitHub extensions, which the tests check separately)."""


def rendered(markdown: str) -> str:
    """The HTML of a Markdown body."""
    return MARKDOWN.render(markdown)


def text_of(markdown: str) -> str:
    """The text of a Markdown body as rendered: tags dropped, entities decoded."""
    return html.unescape(re.sub(r"<[^>]+>", "", rendered(markdown))).strip()


def shown(markdown: str) -> str:
    """The text a reader sees of a Markdown body (`text_of` without invisible word joiners)."""
    return text_of(markdown).replace("\u2060", "")
