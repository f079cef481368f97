"""The small Markdown that fedrad writes (model cards) as HTML: headings, pipe tables,
`-`/`*` lists, paragraphs, `**bold**` and `` `code` ``.

Text is escaped first and only then given the few tags made here, so nothing in the
Markdown can become markup of its own. Anything else reads as plain text.
"""
from __future__ import annotations

import re
from html import escape

_HEADING = re.compile(r"^(#{1,6})\s+(.*)$")
_LIST_ITEM = re.compile(r"^\s*[-*]\s+(.*)$")
_TABLE_RULE = re.compile(r"^\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?$")
_BOLD = re.compile(r"\*\*(.+?)\*\*")
_CODE = re.compile(r"`([^`]+)`")


def inline(text: str) -> str:
    """Escaped text with `code` and **bold** as tags."""
    escaped = escape(text)
    escaped = _CODE.sub(r"<code>\1</code>", escaped)
    return _BOLD.sub(r"<strong>\1</strong>", escaped)


def _cells(row: str) -> list[str]:
    row = row.strip()
    row = row[1:] if row.startswith("|") else row
    row = row[:-1] if row.endswith("|") else row
    return [cell.strip() for cell in row.split("|")]


def _table(rows: list[str]) -> str:
    head, body = _cells(rows[0]), [_cells(row) for row in rows[2:]]
    html = ["<table><thead><tr>", *(f"<th>{inline(c)}</th>" for c in head), "</tr></thead><tbody>"]
    for cells in body:
        html += ["<tr>", *(f"<td>{inline(c)}</td>" for c in cells), "</tr>"]
    return "".join(html + ["</tbody></table>"])


def markdown_to_html(markdown: str) -> str:
    """HTML for `markdown`, block by block."""
    lines, out, index = markdown.splitlines(), [], 0
    while index < len(lines):
        line = lines[index]
        heading = _HEADING.match(line)
        if not line.strip():
            index += 1
        elif heading:
            level = len(heading.group(1))
            out.append(f"<h{level}>{inline(heading.group(2).strip())}</h{level}>")
            index += 1
        elif line.lstrip().startswith("|") and index + 1 < len(lines) and _TABLE_RULE.match(lines[index + 1].strip()):
            end = index + 2
            while end < len(lines) and lines[end].lstrip().startswith("|"):
                end += 1
            out.append(_table(lines[index:end]))
            index = end
        elif _LIST_ITEM.match(line):
            items = []
            while index < len(lines) and _LIST_ITEM.match(lines[index]):
                items.append(f"<li>{inline(_LIST_ITEM.match(lines[index]).group(1))}</li>")
                index += 1
            out.append("<ul>" + "".join(items) + "</ul>")
        else:
            paragraph = []
            while index < len(lines) and lines[index].strip() and not _starts_block(lines, index):
                paragraph.append(lines[index].strip())
                index += 1
            out.append(f"<p>{inline(' '.join(paragraph))}</p>")
    return "\n".join(out)


def _starts_block(lines: list[str], index: int) -> bool:
    line = lines[index]
    return bool(_HEADING.match(line) or _LIST_ITEM.match(line)
                or (line.lstrip().startswith("|") and index + 1 < len(lines)
                    and _TABLE_RULE.match(lines[index + 1].strip())))
