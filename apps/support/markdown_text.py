"""Markdown to the sections a knowledge base indexes, with markdown-it-py's CommonMark parser
(plus GitHub tables and strikethrough); never pattern matching on the Markdown.

    parsed = markdown_sections(text)   # .meta (front matter), .first_h1, .sections: [(heading | None, text)]

Each heading starts a section. The text of a section reads as the page does, in a fixed shape that
the chunker and the sentence splitter (``apps.support.extractive.split_section``) rely on:

* a paragraph is one line (soft line breaks become spaces, hard breaks new lines); blocks are
  separated by a blank line;
* a list item is a line ``- text`` or ``3. text`` (its number as written), nested items indented
  two spaces a level; a list is one block;
* a table is ``| a | b |`` lines: the header row, a ``|---|---|`` separator, then the body rows;
* code keeps its lines; a raw HTML block keeps its visible text (``apps.support.html_text``);
* dropped: HTML comments and inline tags, link targets, image URLs (the alt text stays), emphasis.

Front matter is a YAML mapping between ``---`` lines at the very top (``title``, ``url``...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml
from markdown_it import MarkdownIt
from markdown_it.token import Token

from apps.support.html_text import html_text

_PARSER = MarkdownIt("commonmark", {"html": True}).enable(["table", "strikethrough"])
FRONT_MATTER_ENDS = ("---", "...")


class FrontMatterError(ValueError):
    """The YAML between the front matter's ``---`` lines does not parse."""


@dataclass
class MarkdownSections:
    meta: dict[str, Any]
    first_h1: str | None
    sections: list[tuple[str | None, str]] = field(default_factory=list)


def front_matter(text: str) -> tuple[dict[str, Any], str]:
    """(the YAML mapping at the top, the rest); ({}, text) when there is none."""
    lines = text.split("\n")
    if not lines or lines[0].strip() != "---":
        return {}, text
    end = next((i for i in range(1, len(lines)) if lines[i].strip() in FRONT_MATTER_ENDS), None)
    if end is None:
        return {}, text
    try:
        meta = yaml.safe_load("\n".join(lines[1:end])) or {}
    except yaml.YAMLError as exc:
        raise FrontMatterError(f"bad front matter: {exc}") from None
    if not isinstance(meta, dict):  # a thematic break and a line of prose, not front matter
        return {}, text
    return meta, "\n".join(lines[end + 1 :])


def inline_text(token: Token) -> str:
    """What a reader sees of an inline run: text, code, image alt text; not tags or targets."""
    out: list[str] = []
    for child in token.children or []:
        if child.type in ("text", "code_inline"):
            out.append(child.content)
        elif child.type == "softbreak":
            out.append(" ")
        elif child.type == "hardbreak":
            out.append("\n")
        elif child.type == "image":
            out.append(inline_text(child))
    return "".join(out)


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


class _Renderer:
    def __init__(self) -> None:
        self.sections: list[tuple[str | None, str]] = []
        self.heading: str | None = None
        self.first_h1: str | None = None
        self.blocks: list[str] = []
        self.lists: list[str] = []  # per open list: "" (bullet) or the ordered marker
        self.item_prefix: str | None = None  # the marker of a list item whose first line is pending
        self.list_lines: list[str] = []
        self.rows: list[list[str]] = []
        self.header_rows = 0

    def block(self, text: str) -> None:
        text = text.strip("\n")
        if not text.strip():
            return
        if self.lists:  # inside a list item: a continuation of it
            indent = "  " * len(self.lists)
            self.list_lines.extend(f"{indent}{line}" for line in text.split("\n"))
        else:
            self.blocks.append(text)

    def close_section(self) -> None:
        self.sections.append((self.heading, "\n\n".join(self.blocks)))
        self.blocks = []

    def render(self, tokens: list[Token]) -> None:
        i = 0
        while i < len(tokens):
            tok = tokens[i]
            kind = tok.type
            if kind == "heading_open":
                self.close_section()
                text = " ".join(inline_text(tokens[i + 1]).split())
                self.heading = text or None
                if tok.tag == "h1" and self.first_h1 is None and text:
                    self.first_h1 = text
                i += 3  # heading_open, inline, heading_close
                continue
            if kind in ("bullet_list_open", "ordered_list_open"):
                self.lists.append(tok.markup if kind == "ordered_list_open" else "")
            elif kind in ("bullet_list_close", "ordered_list_close"):
                self.lists.pop()
                if not self.lists:
                    self.blocks.append("\n".join(self.list_lines))
                    self.list_lines = []
            elif kind == "list_item_open":
                marker = self.lists[-1]
                self.item_prefix = f"{tok.info}{marker} " if marker else "- "
            elif kind == "inline" and tokens[i - 1].type in ("th_open", "td_open"):
                self.rows[-1].append(_cell(inline_text(tok)))
            elif kind == "inline":
                self.text(inline_text(tok))
            elif kind == "tr_open":
                self.rows.append([])
            elif kind == "thead_close":
                self.header_rows = len(self.rows)
            elif kind == "table_close":
                self.table()
            elif kind in ("fence", "code_block"):
                self.text(tok.content.rstrip("\n"))
            elif kind == "html_block":
                self.text(html_text(tok.content).strip())
            i += 1
        self.close_section()

    def text(self, text: str) -> None:
        if self.item_prefix is not None:
            indent = "  " * (len(self.lists) - 1)
            first, _, rest = text.partition("\n")
            self.list_lines.append(f"{indent}{self.item_prefix}{first}")
            self.item_prefix = None
            if rest:
                self.block(rest)
            return
        self.block(text)

    def table(self) -> None:
        lines = []
        for n, row in enumerate(self.rows):
            lines.append("| " + " | ".join(row) + " |")
            if n + 1 == self.header_rows:
                lines.append("|" + "|".join("---" for _ in row) + "|")
        self.rows, self.header_rows = [], 0
        self.block("\n".join(lines))


def markdown_sections(text: str) -> MarkdownSections:
    """Front matter, the first level-1 heading and the sections of a Markdown text."""
    meta, body = front_matter(text)
    renderer = _Renderer()
    renderer.render(_PARSER.parse(body))
    return MarkdownSections(meta, renderer.first_h1, renderer.sections)
