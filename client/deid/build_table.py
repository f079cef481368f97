"""Generate ``annex_e_2023b.json`` from DICOM PS3.15 Table E.1-1 (DocBook XML).

Run from the repository root::

    python -m client.deid.build_table [--xml PATH] [--out PATH] [--check]

The XML is looked up, in order, at ``--xml``, ``$FEDRAD_STANDARDS_DIR``,
``<repo>/../shared/standards/`` (the shared folder beside the checkout) and
``<repo>/shared/standards/``.
The JSON is generated, never hand-edited; a unit test regenerates it and
compares it byte for byte with the committed file.

Zero-width spaces in the XML's text are dropped. Rows the standard lists twice for one tag (2023b has three such pairs, which
differ only in an option column) are merged into one entry: where the two
rows disagree, the entry takes the code that retains less (C over K) and
records the disagreement under ``provenance.merged_rows``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

EDITION = "2023b"
XML_NAME = f"dicom-ps3.15-{EDITION}.xml"
TABLE_ID = "table_E.1-1"
COMMAND = "python -m client.deid.build_table"
OUT_PATH = Path(__file__).with_name(f"annex_e_{EDITION}.json")

_DB = "{http://docbook.org/ns/docbook}"
_XML_ID = "{http://www.w3.org/XML/1998/namespace}id"

# Header text in the standard -> JSON key. Order is the table's column order.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("Attribute Name", "name"),
    ("Tag", "tag"),
    ("Retd. (from PS3.6)", "retired"),
    ("In Std. Comp. IOD (from PS3.3)", "in_std_comp_iod"),
    ("Basic Prof.", "basic"),
    ("Rtn. Safe Priv. Opt.", "retain_safe_private"),
    ("Rtn. UIDs Opt.", "retain_uids"),
    ("Rtn. Dev. Id. Opt.", "retain_device_identity"),
    ("Rtn. Inst. Id. Opt.", "retain_institution_identity"),
    ("Rtn. Pat. Chars. Opt.", "retain_patient_characteristics"),
    ("Rtn. Long. Full Dates Opt.", "retain_long_full_dates"),
    ("Rtn. Long. Modif. Dates Opt.", "retain_long_modified_dates"),
    ("Clean Desc. Opt.", "clean_descriptors"),
    ("Clean Struct. Cont. Opt.", "clean_structured_content"),
    ("Clean Graph. Opt.", "clean_graphics"),
)
OPTION_KEYS = tuple(key for _, key in COLUMNS[5:])
ACTION_CODES = frozenset({"D", "Z", "X", "K", "C", "U", "Z/D", "X/Z", "X/D", "X/Z/D", "X/Z/U*"})
# Lower rank retains less; used only to merge duplicated rows.
_RETENTION_RANK = {"X": 0, "Z": 1, "D": 2, "U": 3, "C": 4, "K": 5}

_TAG_RE = re.compile(r"^\(([0-9A-Fa-fx]{4}),([0-9A-Fa-fx]{4})\)$")
_PRIVATE_TEXT = "(gggg,eeee) where gggg is odd"


class TableFormatError(ValueError):
    """The XML does not hold Table E.1-1 in the layout this generator knows."""


def _text(elem: ET.Element) -> str:
    """Whitespace-normalised text of an element and its children."""
    raw = "".join(elem.itertext()) if elem is not None else ""
    return " ".join(raw.replace("\u200b", "").split())  # the XML has zero-width spaces


def _header_text(th: ET.Element) -> str:
    parts: list[str] = []
    for node in th.iter():
        if node.text:
            parts.append(node.text)
        if node.tag == f"{_DB}olink":
            parts.append(node.get("targetdoc", ""))
        if node.tail and node is not th:
            parts.append(node.tail)
    return " ".join("".join(parts).split())


def _tag_fields(text: str) -> dict[str, object]:
    """Normalise the tag column: exact tags, masked tags (50xx,xxxx) and the private row."""
    if text == _PRIVATE_TEXT:
        return {"tag": "(gggg,eeee)", "pattern": "ggggeeee", "private": True}
    match = _TAG_RE.match(text)
    if not match:
        raise TableFormatError(f"unrecognised tag cell layout in {TABLE_ID}; update build_table")
    group, elem = match.group(1).upper(), match.group(2).upper()
    pattern = (group + elem).replace("X", "x")
    return {"tag": f"({group},{elem})".replace("X", "x"), "pattern": pattern, "private": False}


def _flag(text: str, column: str) -> bool:
    if text not in ("Y", "N"):
        raise TableFormatError(f"column {column!r} holds a value other than Y/N; update build_table")
    return text == "Y"


def _action(text: str, column: str) -> str | None:
    if not text:
        return None
    if text not in ACTION_CODES:
        raise TableFormatError(f"column {column!r} holds an unknown action code; update build_table")
    return text


def _find_table(root: ET.Element) -> ET.Element:
    for elem in root.iter(f"{_DB}table"):
        if elem.get(_XML_ID) == TABLE_ID:
            return elem
    raise TableFormatError(f"{TABLE_ID} not found; pass the PS3.15 DocBook XML with --xml")


def parse_table(xml_bytes: bytes) -> tuple[str, list[dict[str, object]]]:
    """Return the table caption and one dict per row, in the standard's order."""
    table = _find_table(ET.fromstring(xml_bytes))
    caption = _text(table.find(f"{_DB}caption"))
    header = [_header_text(th) for th in table.find(f"{_DB}thead").iter(f"{_DB}th")]
    expected = [name for name, _ in COLUMNS]
    if header != expected:
        raise TableFormatError(f"{TABLE_ID} columns differ from the {EDITION} layout; update COLUMNS")
    rows: list[dict[str, object]] = []
    for tr in table.find(f"{_DB}tbody").iter(f"{_DB}tr"):
        cells = tr.findall(f"{_DB}td")
        if len(cells) != len(COLUMNS) or any(
            c.get(a, "1") != "1" for c in cells for a in ("colspan", "rowspan")
        ):
            raise TableFormatError(f"{TABLE_ID} row with spanned or missing cells; update build_table")
        values = [_text(c) for c in cells]
        row: dict[str, object] = {"name": values[0]}
        row.update(_tag_fields(values[1]))
        row["retired"] = _flag(values[2], COLUMNS[2][1])
        row["in_std_comp_iod"] = _flag(values[3], COLUMNS[3][1])
        basic = _action(values[4], COLUMNS[4][1])
        if basic is None:
            raise TableFormatError(f"{TABLE_ID} row without a Basic Profile action")
        row["basic"] = basic
        for (column, key), value in zip(COLUMNS[5:], values[5:]):
            row[key] = _action(value, column)
        rows.append(row)
    return caption, rows


def _merge(first: dict[str, object], second: dict[str, object]) -> tuple[dict[str, object], list[str]]:
    """Merge two rows for one tag; conflicting codes resolve to the one retaining less."""
    merged, differing = dict(first), []
    for key, value in second.items():
        if merged.get(key) == value:
            continue
        differing.append(key)
        if key not in ("basic", *OPTION_KEYS):
            raise TableFormatError(f"duplicated {TABLE_ID} rows differ in {key!r}; resolve by hand")
        candidates = [v for v in (merged.get(key), value) if v is not None]
        merged[key] = min(candidates, key=lambda code: _RETENTION_RANK.get(code, -1))
    return merged, differing


def build(xml_bytes: bytes) -> dict[str, object]:
    """Build the JSON document (as a dict) from the XML bytes."""
    caption, rows = parse_table(xml_bytes)
    by_tag: dict[str, dict[str, object]] = {}
    merged_rows: list[dict[str, object]] = []
    for row in rows:
        tag = str(row["tag"])
        if tag in by_tag:
            by_tag[tag], differing = _merge(by_tag[tag], row)
            merged_rows.append({"tag": tag, "columns_differing": differing})
        else:
            by_tag[tag] = row
    return {
        "edition": EDITION,
        "provenance": {
            "standard": f"DICOM PS3.15 {EDITION}",
            "source_file": XML_NAME,
            "source_sha256": hashlib.sha256(xml_bytes).hexdigest(),
            "table_id": TABLE_ID,
            "table_caption": caption,
            "generated_by": COMMAND,
            "source_rows": len(rows),
            "merged_rows": merged_rows,
            "merge_rule": "duplicated rows merged; on conflict the code retaining less wins (X<Z<D<U<C<K)",
        },
        "columns": [key for _, key in COLUMNS],
        "attributes": list(by_tag.values()),
    }


def render(document: dict[str, object]) -> str:
    """Serialise deterministically: header indented, one attribute per line."""
    head = {k: v for k, v in document.items() if k != "attributes"}
    text = json.dumps(head, indent=2, ensure_ascii=True)
    lines = [json.dumps(a, ensure_ascii=True, separators=(", ", ": ")) for a in document["attributes"]]
    body = ",\n    ".join(lines)
    return text[:-2] + ',\n  "attributes": [\n    ' + body + "\n  ]\n}\n"


def find_xml() -> Path | None:
    """Locate the standard's XML without a command-line argument."""
    candidates = []
    if os.environ.get("FEDRAD_STANDARDS_DIR"):
        candidates.append(Path(os.environ["FEDRAD_STANDARDS_DIR"]) / XML_NAME)
    repo_root = Path(__file__).resolve().parents[2]
    candidates += [repo_root.parent / "shared" / "standards" / XML_NAME, repo_root / "shared" / "standards" / XML_NAME]
    return next((p for p in candidates if p.is_file()), None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.splitlines()[0])
    parser.add_argument("--xml", type=Path, help=f"path to {XML_NAME}")
    parser.add_argument("--out", type=Path, default=OUT_PATH, help="JSON to write")
    parser.add_argument("--check", action="store_true", help="exit 1 if the JSON on disk is stale")
    args = parser.parse_args(argv)
    xml_path = args.xml or find_xml()
    if xml_path is None or not xml_path.is_file():
        parser.error(f"{XML_NAME} not found; pass --xml PATH or set FEDRAD_STANDARDS_DIR")
    text = render(build(xml_path.read_bytes()))
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.is_file() else ""
        if current != text:
            print(f"{args.out} is stale; run `{COMMAND}`", file=sys.stderr)
            return 1
        return 0
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out.name}: {len(json.loads(text)['attributes'])} attributes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
