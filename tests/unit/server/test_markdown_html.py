"""The model card's Markdown as HTML: blocks, inline emphasis, and nothing unescaped."""
from server.markdown_html import markdown_to_html

CARD = """# Card <x>

**NON-PRIVATE RUN:** no guarantee; see `model.safetensors`.
Second line of the paragraph.

- one
- two <b>

| site | epsilon |
|---|---|
| a<script> | 1.5 |
"""


def test_blocks_become_headings_paragraphs_lists_and_tables():
    assert markdown_to_html(CARD).splitlines() == [
        "<h1>Card &lt;x&gt;</h1>",
        "<p><strong>NON-PRIVATE RUN:</strong> no guarantee; see <code>model.safetensors</code>. "
        "Second line of the paragraph.</p>",
        "<ul><li>one</li><li>two &lt;b&gt;</li></ul>",
        "<table><thead><tr><th>site</th><th>epsilon</th></tr></thead><tbody>"
        "<tr><td>a&lt;script&gt;</td><td>1.5</td></tr></tbody></table>",
    ]


def test_a_pipe_line_without_a_rule_is_text():
    assert markdown_to_html("| not | a table |") == "<p>| not | a table |</p>"
