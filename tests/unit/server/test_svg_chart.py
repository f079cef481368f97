"""Inline SVG line charts: round tick values, breaks where a value is missing, escaped names."""
from server.svg_chart import line_chart, nice_ticks


def test_ticks_are_round_values_that_cover_the_range():
    assert nice_ticks(0.0, 1.0) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert nice_ticks(4.3, 6.2) == [4.0, 4.5, 5.0, 5.5, 6.0, 6.5]
    assert nice_ticks(3.0, 3.0) == [3.0, 3.2, 3.4, 3.6, 3.8, 4.0]  # a flat series still gets an axis


def test_a_missing_value_breaks_the_line_and_names_are_escaped():
    svg = line_chart("AUC <per> round", {"a&b": [(1, 0.5), (2, 0.6), (3, None), (4, 0.7), (5, 0.8)]},
                     y_label="AUC", y_range=(0.0, 1.0))
    assert svg.count("<polyline") == 2 and svg.count("<circle") == 4
    assert "AUC &lt;per&gt; round" in svg and "a&amp;b, round 4: 0.7" in svg and "a&b" not in svg


def test_no_values_say_so():
    assert "no data" in line_chart("empty", {"a": [(1, None)]}, y_label="x")
