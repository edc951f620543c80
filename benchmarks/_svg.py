"""Headline charts for the benchmark pages, as small self-contained SVG files.

No plotting library: a chart is horizontal bars, optionally in groups with one colour per
series (latency of each call at each table size, say), and a dashed reference line (a
target, the baseline's 1.0x). Every figure is written at the end of its bar, so a chart
reads without the table, and the text is real SVG text (searchable, sharp at any zoom).
``bar_chart`` returns the document; ``write`` saves it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

PALETTE = ("#3f6fb5", "#e07b39", "#4c9a5b", "#b0413e", "#7d5ba6", "#8c6d46")
FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif"
CHAR = 0.56  # average glyph width, in font sizes, for laying out labels
BAR = 16
PLOT = 380  # width of the plotting area of a bar chart


def _text_width(text: str, size: float) -> float:
    return len(text) * size * CHAR


def _nice_step(top: float, ticks: int = 5) -> float:
    """A round tick step (1, 2 or 5 times a power of ten) that gives about ``ticks`` ticks."""
    if top <= 0:
        return 1.0
    raw = top / ticks
    power = 10 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw)


def _number(value: float) -> str:
    """A compact label: at most 3 significant figures, whole numbers thousands separated."""
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"


def _tick(value: float, step: float) -> str:
    """An axis label with as many decimals as the step needs."""
    decimals = max(0, -math.floor(math.log10(step)))
    return f"{value:,.{decimals}f}"


def _document(width: float, height: float, title: str, body: list[str]) -> str:
    return "\n".join(
        [
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
            f'viewBox="0 0 {width:.0f} {height:.0f}" role="img" aria-label={quoteattr(title)} '
            f'font-family={quoteattr(FONT)} font-size="12">',
            f"<title>{escape(title)}</title>",
            f'<rect width="{width:.0f}" height="{height:.0f}" fill="#ffffff"/>',
            *body,
            "</svg>",
            "",
        ]
    )


def _header(title: str, subtitle: str) -> tuple[list[str], float]:
    parts = [f'<text x="12" y="22" font-size="15" font-weight="600">{escape(title)}</text>']
    y = 30.0
    if subtitle:
        parts.append(f'<text x="12" y="42" fill="#555555">{escape(subtitle)}</text>')
        y = 50.0
    return parts, y


def _legend(names: Sequence[str], x: float, y: float) -> list[str]:
    parts = []
    for index, name in enumerate(names):
        colour = PALETTE[index % len(PALETTE)]
        parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="12" height="12" fill="{colour}"/>')
        parts.append(f'<text x="{x + 17:.1f}" y="{y + 10:.1f}">{escape(name)}</text>')
        x += 17 + _text_width(name, 12) + 18
    return parts


def bar_chart(
    title: str,
    groups: Sequence[tuple[str, Mapping[str, float]]],
    *,
    subtitle: str = "",
    unit: str = "",
    reference: float | None = None,
    reference_label: str = "",
    label: Callable[[float], str] = _number,
) -> str:
    """Horizontal bars: one group per row label, one bar per series in each group.

    Args:
        title: The chart's heading (also its accessible name).
        groups: ``(row label, {series name: value})`` in display order; a series missing
            from a group is left out of it. With one series the legend is omitted.
        subtitle: A second line under the title: conditions, command, what is left out.
        unit: Appended to every value label (``" ms"``, ``"x"``).
        reference: Draws a dashed vertical line at this value (a target, a baseline).
        reference_label: Written at the top of the reference line.
        label: Formats each value written at the end of its bar.

    Returns:
        The SVG document, one ``<rect class="bar">`` per value with ``data-value`` set.
    """
    series = list(dict.fromkeys(name for _, values in groups for name in values))
    values = [value for _, group in groups for value in group.values()]
    if any(value < 0 or not math.isfinite(value) for value in values):
        raise ValueError("bar values must be finite and not negative")
    top = max([*values, reference or 0.0, 0.0])
    step = _nice_step(top)
    top = step * math.ceil(top / step) if top > 0 else 1.0
    left = 12 + max((_text_width(name, 12) for name, _ in groups), default=0) + 10
    value_room = max((_text_width(label(v) + unit, 11) for v in values), default=0) + 16
    width = left + PLOT + value_room
    body, y = _header(title, subtitle)
    if len(series) > 1:
        body += _legend(series, 12, y)
        y += 22
    y += 18  # room for the reference label and the top of the axis
    scale = PLOT / top
    rows_top = y
    for name, group in groups:
        height = len(group) * (BAR + 3) - 3
        body.append(
            f'<text x="{left - 10:.1f}" y="{y + height / 2 + 4:.1f}" text-anchor="end">'
            f"{escape(name)}</text>"
        )
        for series_name, value in group.items():
            colour = PALETTE[series.index(series_name) % len(PALETTE)]
            length = value * scale
            body.append(
                f'<rect class="bar" x="{left:.1f}" y="{y:.1f}" width="{length:.2f}" '
                f'height="{BAR}" fill="{colour}" data-series={quoteattr(series_name)} '
                f'data-value="{value!r}"><title>{escape(name)}, {escape(series_name)}: '
                f"{escape(label(value) + unit)}</title></rect>"
            )
            body.append(
                f'<text x="{left + length + 4:.1f}" y="{y + BAR - 4:.1f}" font-size="11">'
                f"{escape(label(value) + unit)}</text>"
            )
            y += BAR + 3
        y += 9
    bottom = y
    body.append(
        f'<line x1="{left:.1f}" y1="{rows_top - 4:.1f}" x2="{left:.1f}" y2="{bottom:.1f}" '
        'stroke="#333333"/>'
    )
    tick = 0.0
    while tick <= top + step / 2:
        x = left + tick * scale
        body.append(
            f'<line x1="{x:.1f}" y1="{bottom:.1f}" x2="{x:.1f}" y2="{bottom + 4:.1f}" '
            'stroke="#333333"/>'
        )
        body.append(
            f'<text x="{x:.1f}" y="{bottom + 16:.1f}" font-size="11" text-anchor="middle" '
            f'fill="#555555">{escape(_tick(tick, step))}</text>'
        )
        tick += step
    if reference is not None:
        x = left + reference * scale
        body.append(
            f'<line class="reference" x1="{x:.1f}" y1="{rows_top - 6:.1f}" x2="{x:.1f}" '
            f'y2="{bottom:.1f}" stroke="#222222" stroke-dasharray="4 3"/>'
        )
        if reference_label:
            body.append(
                f'<text x="{x:.1f}" y="{rows_top - 9:.1f}" font-size="11" '
                f'text-anchor="middle">{escape(reference_label)}</text>'
            )
    return _document(width, bottom + 28, title, body)


def write(path: str | Path, svg: str) -> Path:
    """Save ``svg`` at ``path`` (creating its folder) and return the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(svg, encoding="utf-8")
    return target
