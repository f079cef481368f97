"""De-identification settings from the site policy's ``[deid]`` table.

``<site-dir>/policy.toml`` (every setting optional; these are the defaults)::

    [deid]
    retain-longitudinal-modified-dates = false  # shift dates by one keyed offset per patient
    retain-patient-characteristics = false      # keep age, sex, size, weight, ...
    clean-descriptors = false                   # keep descriptions that name no one
    retain-safe-private = []   # [["ACME MEDICAL 1.0", 0x10], ...]: (private creator, element offset)

    [[deid.pixel-clean]]       # one table per device and image size; none by default
    manufacturer = "ACME"
    model = "X1"
    rows = 512
    columns = 512
    regions = [[0, 0, 40, 200]]  # row0, col0, row1, col1 (end-exclusive)

:func:`deid_settings` validates the table once and returns the typed configuration of
``client.deid`` (:class:`DeidOptions`, :class:`PixelCleanRule`); every problem is
collected into one :class:`DeidConfigError` naming each setting, its rule and the fix.
Messages name a value's kind, never the value. :func:`describe` says which options are
active, for the operator, again without values.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping

from client.deid import DeidConfigError, DeidOptions, PixelCleanRule

if TYPE_CHECKING:
    from client.privacy import SitePolicy

PIXEL_CLEAN_KEYS = ("manufacturer", "model", "rows", "columns", "regions")


def deid_settings(policy: SitePolicy) -> tuple[DeidOptions, tuple[PixelCleanRule, ...]]:
    """The site's de-identification options and pixel-clean rules from ``policy.deid``."""
    table = policy.deid
    problems: list[str] = []
    values: dict[str, Any] = {}
    for key, value in table.items():
        setting = _SETTINGS.get(key)
        if setting is None:
            problems.append(f"[deid] {key}: unknown setting; rule: [deid] has {', '.join(_SETTINGS)}; "
                            "fix: correct the spelling or remove it")
            continue
        parsed = setting.parse(value, problems)
        if parsed is not None:
            values[setting.attr] = parsed
    rules = values.pop("pixel_clean_rules", ())
    if problems:
        raise DeidConfigError(f"site policy ({policy.source}) [deid] has {len(problems)} problem(s); "
                              "nothing is ingested until they are fixed:\n  - " + "\n  - ".join(problems))
    return DeidOptions(**values), rules


def describe(options: DeidOptions, rules: tuple[PixelCleanRule, ...]) -> str:
    """Which options are active, by setting name and count (never a value)."""
    active = [key for key, setting in _SETTINGS.items()
              if setting.attr in _FLAG_ATTRS and getattr(options, setting.attr)]
    if options.retain_safe_private:
        active.append(f"retain-safe-private ({len(options.retain_safe_private)} private element(s))")
    if rules:
        active.append(f"pixel-clean ({len(rules)} rule(s))")
    return "Basic Profile" + (" + " + ", ".join(active) if active else " (no options)")


# --- settings registry ----------------------------------------------------------------


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, (list, tuple)):
        return "a list"
    return type(value).__name__


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_list(value: Any) -> bool:
    return isinstance(value, (list, tuple))  # the policy freezes TOML arrays into tuples


def _flag(name: str) -> Callable[[Any, list[str]], bool | None]:
    def parse(value: Any, problems: list[str]) -> bool | None:
        if isinstance(value, bool):
            return value
        problems.append(f"[deid] {name}: got {_kind(value)}; rule: true or false; fix: set {name} = true "
                        "or remove it (default false)")
        return None
    return parse


def _safe_private(value: Any, problems: list[str]) -> frozenset[tuple[str, int]] | None:
    name = "retain-safe-private"
    fix = f'fix: write {name} = [["<private creator>", 0x10], ...] (the creator as in the header, the ' \
          "element's low byte: 0x10 for (gggg,xx10))"
    if not _is_list(value):
        problems.append(f"[deid] {name}: got {_kind(value)}; rule: a list of [private creator, element "
                        f"offset] pairs; {fix}")
        return None
    pairs, count = set(), len(problems)
    for index, item in enumerate(value, start=1):
        where = f"[deid] {name} entry {index}"
        if not _is_list(item) or len(item) != 2:
            got = f"a list of {len(item)}" if _is_list(item) else _kind(item)
            problems.append(f"{where}: got {got}; rule: a [private creator, element offset] pair; {fix}")
            continue
        creator, offset = item
        good_creator = isinstance(creator, str) and bool(creator.strip())
        good_offset = _is_int(offset) and 0 <= offset <= 0xFF
        if not good_creator:
            got = "an empty string" if isinstance(creator, str) else _kind(creator)
            problems.append(f"{where}: the private creator is {got}; rule: a non-empty string; {fix}")
        if not good_offset:
            problems.append(f"{where}: the element offset is {_kind(offset)}; rule: an integer 0x00-0xFF; {fix}")
        if good_creator and good_offset:
            pairs.add((creator.strip(), offset))
    return None if len(problems) > count else frozenset(pairs)


def _pixel_clean(value: Any, problems: list[str]) -> tuple[PixelCleanRule, ...] | None:
    name = "pixel-clean"
    if not _is_list(value) or not all(isinstance(v, Mapping) for v in value):
        got = "a list holding a non-table" if _is_list(value) else _kind(value)
        problems.append(f"[deid] {name}: got {got}; "
                        f"rule: a list of tables; fix: write one [[deid.{name}]] table per device and image size "
                        f"with {', '.join(PIXEL_CLEAN_KEYS)}")
        return None
    rules: list[PixelCleanRule] = []
    seen: dict[tuple, int] = {}
    count = len(problems)
    for index, table in enumerate(value, start=1):
        rule = _one_rule(table, f"[[deid.{name}]] {index}", problems)
        if rule is None:
            continue
        device = (rule.manufacturer.strip(), rule.model.strip(), rule.rows, rule.columns)
        if device in seen:
            problems.append(f"[[deid.{name}]] {index}: same manufacturer, model, rows and columns as rule "
                            f"{seen[device]}, so it never applies; rule: one rule per device and image size; "
                            "fix: merge its regions into the first rule")
            continue
        seen[device] = index
        rules.append(rule)
    return None if len(problems) > count else tuple(rules)


def _one_rule(table: Mapping, where: str, problems: list[str]) -> PixelCleanRule | None:
    count = len(problems)
    for key in table:
        if key not in PIXEL_CLEAN_KEYS:
            problems.append(f"{where} {key}: unknown setting; rule: a pixel-clean rule has "
                            f"{', '.join(PIXEL_CLEAN_KEYS)}; fix: correct the spelling or remove it")
    for key in PIXEL_CLEAN_KEYS:
        if key not in table:
            problems.append(f"{where}: {key} is missing; rule: a pixel-clean rule names "
                            f"{', '.join(PIXEL_CLEAN_KEYS)}; fix: add {key} = ...")
    for key, attribute in (("manufacturer", "Manufacturer"), ("model", "ManufacturerModelName")):
        value = table.get(key, "-")
        if not isinstance(value, str) or not value.strip():
            got = "an empty string" if isinstance(value, str) else _kind(value)
            problems.append(f"{where} {key}: got {got}; rule: the header's {attribute} as a non-empty string; "
                            "fix: copy it from a file of that device")
    for key in ("rows", "columns"):
        value = table.get(key, 1)
        if not _is_int(value) or value < 1:
            problems.append(f"{where} {key}: got {_kind(value)}; rule: an integer >= 1 (the image's "
                            f"{key.capitalize()}); fix: copy it from a file of that device")
    rows, columns, regions = table.get("rows"), table.get("columns"), table.get("regions")
    if not all(_is_int(v) and v >= 1 for v in (rows, columns)) or regions is None:
        return None  # the regions are checked against a valid size only
    region_fix = f"fix: write regions = [[row0, col0, row1, col1], ...] with 0 <= row0 < row1 <= {rows} " \
                 f"and 0 <= col0 < col1 <= {columns}"
    if not _is_list(regions) or not regions:
        got = "an empty list" if _is_list(regions) else _kind(regions)
        problems.append(f"{where} regions: got {got}; rule: at least one rectangle (end-exclusive); {region_fix}")
        return None
    boxes = []
    for index, region in enumerate(regions, start=1):
        if not _is_list(region) or len(region) != 4 or not all(_is_int(v) for v in region):
            problems.append(f"{where} regions {index}: got {_kind(region)}; rule: four integers row0, col0, "
                            f"row1, col1; {region_fix}")
            continue
        r0, c0, r1, c1 = region
        if not (0 <= r0 < r1 <= rows and 0 <= c0 < c1 <= columns):
            problems.append(f"{where} regions {index}: the rectangle is empty or outside the {rows} x {columns} "
                            f"image; rule: 0 <= row0 < row1 <= rows and 0 <= col0 < col1 <= columns; {region_fix}")
            continue
        boxes.append((r0, c0, r1, c1))
    if len(problems) > count:
        return None
    try:
        return PixelCleanRule(manufacturer=table["manufacturer"], model=table["model"], rows=rows,
                              columns=columns, regions=tuple(boxes))
    except DeidConfigError as error:  # a rule this module does not check yet: still one error
        problems.append(f"{where}: {error}")
        return None


@dataclass(frozen=True)
class _Setting:
    attr: str
    parse: Callable[[Any, list[str]], Any]


_SETTINGS: dict[str, _Setting] = {
    "retain-longitudinal-modified-dates": _Setting("retain_longitudinal_modified_dates",
                                                   _flag("retain-longitudinal-modified-dates")),
    "retain-patient-characteristics": _Setting("retain_patient_characteristics",
                                               _flag("retain-patient-characteristics")),
    "clean-descriptors": _Setting("clean_descriptors", _flag("clean-descriptors")),
    "retain-safe-private": _Setting("retain_safe_private", _safe_private),
    "pixel-clean": _Setting("pixel_clean_rules", _pixel_clean),
}
_FLAG_ATTRS = ("retain_longitudinal_modified_dates", "retain_patient_characteristics", "clean_descriptors")
