"""The benchmarks' chart writer draws one bar per figure, at the right length, in valid SVG."""

from __future__ import annotations

from pathlib import Path
from xml.etree import ElementTree

import pytest
from test_explain import bench_module

SVG = "{http://www.w3.org/2000/svg}"


def bars(document: str) -> list[ElementTree.Element]:
    root = ElementTree.fromstring(document)  # raises on anything that is not well-formed XML
    assert root.tag == f"{SVG}svg"
    return [rect for rect in root.iter(f"{SVG}rect") if rect.get("class") == "bar"]


def test_one_bar_per_value_with_lengths_in_proportion() -> None:
    svg = bench_module("_svg")
    document = svg.bar_chart(
        "Ratio <to> raw & co",  # escaped, not markup
        [("bulk", {"ratio": 1.07}), ("buffered", {"ratio": 0.92}), ("full", {"ratio": 0.38})],
        unit="x",
        reference=1.0,
        reference_label="raw = 1.00",
    )
    drawn = bars(document)
    assert [float(rect.get("data-value", "")) for rect in drawn] == [1.07, 0.92, 0.38]
    widths = [float(rect.get("width", "")) for rect in drawn]
    assert widths[0] > widths[1] > widths[2] > 0
    assert widths[1] / widths[0] == pytest.approx(0.92 / 1.07, rel=1e-3)
    root = ElementTree.fromstring(document)
    assert root.findtext(f"{SVG}title") == "Ratio <to> raw & co"
    texts = [text.text for text in root.iter(f"{SVG}text")]
    assert {"bulk", "buffered", "full", "1.07x", "raw = 1.00"} <= set(texts)
    assert [line.get("class") for line in root.iter(f"{SVG}line")].count("reference") == 1


def test_groups_of_series_share_colours_and_a_legend() -> None:
    svg = bench_module("_svg")
    document = svg.bar_chart(
        "p50 by size",
        [("timeline", {"50,000": 0.99, "1,000,000": 0.74}), ("count", {"50,000": 0.31})],
        unit=" ms",
    )
    drawn = bars(document)
    assert [(rect.get("data-series"), rect.get("data-value")) for rect in drawn] == [
        ("50,000", "0.99"),
        ("1,000,000", "0.74"),
        ("50,000", "0.31"),
    ]
    assert drawn[0].get("fill") == drawn[2].get("fill") != drawn[1].get("fill")
    texts = {text.text for text in ElementTree.fromstring(document).iter(f"{SVG}text")}
    assert {"50,000", "1,000,000", "0.99 ms", "0.31 ms"} <= texts


def test_refuses_values_it_cannot_draw() -> None:
    svg = bench_module("_svg")
    for value in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="finite and not negative"):
            svg.bar_chart("bad", [("row", {"s": value})])


def test_write_creates_the_folder(tmp_path: Path) -> None:
    svg = bench_module("_svg")
    target = svg.write(tmp_path / "charts" / "c.svg", svg.bar_chart("t", [("a", {"s": 0.0})]))
    assert len(bars(target.read_text(encoding="utf-8"))) == 1
