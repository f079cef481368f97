"""Line charts as inline SVG, with no plotting library: one chart per call, series by name.

A point's y may be None (no value that round): the line breaks there. Every text that goes
into the SVG (title, axis labels, series names) is escaped; each point carries an SVG
`<title>`, which browsers show on hover without any script.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape
from typing import Mapping, Sequence

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
DASHES = ("", "6 3", "2 3")  # after the palette is used up, the colours repeat with dashes
WIDTH, HEIGHT = 640, 300
LEFT, RIGHT, TOP, BOTTOM = 60, 200, 34, 44
LEGEND_CHARS = 28  # a longer series name is cut in the legend (in full on hover)  # margins: the legend sits on the right

Point = tuple[float, "float | None"]


@dataclass(frozen=True)
class Axis:
    """A linear scale from data values to pixels, with rounded tick values."""

    low: float
    high: float
    pixel_low: float
    pixel_high: float

    def __call__(self, value: float) -> float:
        share = (value - self.low) / (self.high - self.low)
        return self.pixel_low + share * (self.pixel_high - self.pixel_low)


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About `count` round values (steps of 1, 2 or 5 times a power of ten) covering [low, high]."""
    if high <= low:
        high = low + 1.0
    raw = (high - low) / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.floor(low / step) * step
    ticks, value = [], first
    while value < high + step * 0.5:
        ticks.append(round(value, 12))
        value += step
    if ticks[-1] < high:
        ticks.append(round(ticks[-1] + step, 12))
    return ticks


def _label(value: float) -> str:
    return f"{value:g}" if abs(value) < 1e5 else f"{value:.2e}"


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def line_chart(title: str, series: Mapping[str, Sequence[Point]], *, y_label: str, x_label: str = "round",
               y_range: tuple[float | None, float | None] = (None, None)) -> str:
    """An `<svg>` element plotting each named series of (x, y) points.

    `y_range` fixes either end of the y axis (None: from the data).
    """
    points = [(x, y) for values in series.values() for x, y in values if _finite(x) and _finite(y)]
    height = max(HEIGHT, TOP + 14 * len(series) + 10)  # a long legend makes the chart taller
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {WIDTH} {height}" '
             f'width="{WIDTH}" height="{height}" font-family="sans-serif" font-size="11" role="img" aria-label="{escape(title)}">',
             f'<text x="{WIDTH / 2}" y="20" text-anchor="middle" font-weight="bold">{escape(title)}</text>']
    if not points:
        parts.append(f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle">no data</text></svg>')
        return "".join(parts)
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    low, high = y_range
    y_ticks = nice_ticks(min(ys) if low is None else low, max(ys) if high is None else high)
    x_ticks = nice_ticks(min(xs), max(xs), count=min(10, max(1, int(max(xs) - min(xs)))))
    x_axis = Axis(x_ticks[0], x_ticks[-1], LEFT, WIDTH - RIGHT)
    y_axis = Axis(y_ticks[0], y_ticks[-1], HEIGHT - BOTTOM, TOP)
    parts += _axes(x_axis, y_axis, x_ticks, y_ticks, x_label, y_label)
    for index, (name, values) in enumerate(series.items()):
        parts += _series(index, name, values, x_axis, y_axis)
    parts.append("</svg>")
    return "".join(parts)


def _axes(x_axis: Axis, y_axis: Axis, x_ticks, y_ticks, x_label: str, y_label: str) -> list[str]:
    bottom, left, right = HEIGHT - BOTTOM, LEFT, WIDTH - RIGHT
    parts = []
    for tick in y_ticks:
        y = y_axis(tick)
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{right}" y2="{y:.1f}" stroke="#e5e5e5"/>'
                     f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{_label(tick)}</text>')
    for tick in x_ticks:
        x = x_axis(tick)
        parts.append(f'<text x="{x:.1f}" y="{bottom + 16}" text-anchor="middle">{_label(tick)}</text>')
    parts.append(f'<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="#444"/>'
                 f'<line x1="{left}" y1="{TOP}" x2="{left}" y2="{bottom}" stroke="#444"/>'
                 f'<text x="{(left + right) / 2}" y="{HEIGHT - 8}" text-anchor="middle">{escape(x_label)}</text>'
                 f'<text x="14" y="{(TOP + bottom) / 2}" text-anchor="middle" '
                 f'transform="rotate(-90 14 {(TOP + bottom) / 2})">{escape(y_label)}</text>')
    return parts


def _series(index: int, name: str, values: Sequence[Point], x_axis: Axis, y_axis: Axis) -> list[str]:
    colour = PALETTE[index % len(PALETTE)]
    dash = DASHES[(index // len(PALETTE)) % len(DASHES)]
    style = f'stroke="{colour}"' + (f' stroke-dasharray="{dash}"' if dash else "")
    lines, dots, run = [], [], []
    for x, y in list(values) + [(None, None)]:  # the sentinel ends the last line
        if _finite(x) and _finite(y):
            run.append((x_axis(x), y_axis(y)))
            dots.append(f'<circle cx="{run[-1][0]:.1f}" cy="{run[-1][1]:.1f}" r="3" fill="{colour}">'
                        f'<title>{escape(name)}, round {_label(x)}: {y:.4g}</title></circle>')
        elif run:
            if len(run) > 1:
                coordinates = " ".join(f"{px:.1f},{py:.1f}" for px, py in run)
                lines.append(f'<polyline points="{coordinates}" fill="none" stroke-width="2" {style}/>')
            run = []
    parts = lines + dots
    legend_y = TOP + 14 * index
    shown = name if len(name) <= LEGEND_CHARS else name[:LEGEND_CHARS - 1] + "\u2026"
    parts.append(f'<line x1="{WIDTH - RIGHT + 12}" y1="{legend_y}" x2="{WIDTH - RIGHT + 32}" y2="{legend_y}" '
                 f'stroke-width="2" {style}/>'
                 f'<text x="{WIDTH - RIGHT + 36}" y="{legend_y + 4}"><title>{escape(name)}</title>{escape(shown)}</text>')
    return parts
