"""The visible text of an HTML page, split into sections at its headings.

    parsed = html_sections(page)     # .page_title, .first_h1, .sections: [(heading | None, text)]

Scripts, styles, templates and comments are dropped by a real parser (``html.parser``), never by
pattern matching; block elements become line breaks so paragraphs, list items and table cells stay
apart. Markdown files use it for their raw HTML blocks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser

SKIP_TAGS = {"script", "style", "noscript", "template", "svg", "iframe", "object", "head"}
BLOCK_TAGS = {
    "p",
    "div",
    "br",
    "li",
    "ul",
    "ol",
    "tr",
    "td",
    "th",
    "table",
    "section",
    "article",
    "pre",
    "blockquote",
    "dd",
    "dt",
    "hr",
    "main",
    "header",
    "footer",
    "nav",
    "form",
    "figure",
    "figcaption",
}
HEADING_TAGS = {"h1", "h2", "h3", "h4", "h5", "h6"}
VOID_TAGS = {"br", "hr", "img", "input", "meta", "link", "source", "area", "base", "col", "embed", "wbr"}


@dataclass
class HtmlSections:
    page_title: str
    first_h1: str | None
    sections: list[tuple[str | None, str]] = field(default_factory=list)  # (heading, text); None: before any

    @property
    def text(self) -> str:
        return "\n".join(t for _, t in self.sections)


class _HtmlText(HTMLParser):
    """Visible text split into sections at headings; comments are dropped (no handle_comment)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.skip_depth = 0
        self.in_title = False
        self.page_title = ""
        self.first_h1: str | None = None
        self.heading_tag: str | None = None
        self.heading_buf: list[str] = []
        self.sections: list[tuple[str | None, str]] = []
        self.current: str | None = None
        self.buf: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self.in_title = True
        if tag == "body":  # an unclosed <head> must not hide the page
            self.skip_depth = 0
        if tag in SKIP_TAGS:
            if tag not in VOID_TAGS:
                self.skip_depth += 1
            return
        if self.skip_depth:
            return
        if tag in HEADING_TAGS:
            self._close_section()
            self.heading_tag, self.heading_buf = tag, []
        elif tag in BLOCK_TAGS:
            self.buf.append("\n")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in BLOCK_TAGS and not self.skip_depth:
            self.buf.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self.in_title = False
        if tag in SKIP_TAGS:
            self.skip_depth = max(0, self.skip_depth - 1)
            return
        if self.skip_depth:
            return
        if tag == self.heading_tag:
            heading = " ".join("".join(self.heading_buf).split())
            if tag == "h1" and self.first_h1 is None and heading:
                self.first_h1 = heading
            self.current, self.heading_tag = heading or None, None
        elif tag in BLOCK_TAGS:
            self.buf.append("\n")

    def handle_data(self, data: str) -> None:
        if self.in_title:
            self.page_title += data
            return
        if self.skip_depth:
            return
        (self.heading_buf if self.heading_tag else self.buf).append(data)

    def _close_section(self) -> None:
        self.sections.append((self.current, "".join(self.buf)))
        self.buf = []


def html_sections(page: str) -> HtmlSections:
    parser = _HtmlText()
    parser.feed(page)
    parser.close()
    parser._close_section()
    return HtmlSections(" ".join(parser.page_title.split()), parser.first_h1, parser.sections)


def html_text(fragment: str) -> str:
    """The visible text of an HTML fragment (headings included as lines)."""
    parsed = html_sections(fragment)
    lines = []
    for heading, text in parsed.sections:
        if heading:
            lines.append(heading)
        lines.append(text)
    return "\n".join(lines)
