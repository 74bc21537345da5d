"""Seeded random simple HTML tables, small enough for a 64 x 64 image.

One to three rows and columns of short cells, with or without borders, bold cells or a header row,
shaded cells, and now and then a cell spanning two columns or two rows: the ingredients of the
paper's "simple tables" domain.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

WORDS = ["a", "b", "x", "y", "id", "no", "ok", "A", "B", "C", "NA", "yes", "sum", "max", "min"]
SHADES = ["#dddddd", "#bbbbbb", "#999999", "#eeeeee"]


def _content(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.45:
        return str(rng.randint(0, 99) if rng.random() < 0.7 else rng.randint(100, 999))
    if r < 0.85:
        return rng.choice(WORDS)
    return f"{rng.randint(0, 9)}.{rng.randint(0, 9)}"


def _table(rng: random.Random) -> str:
    rows, cols = rng.randint(1, 3), rng.randint(1, 3)
    border = rng.choice(["attribute", "collapse", "none"])
    header = rng.random() < 0.35
    bold_p = 0.0 if header else rng.choice([0.0, 0.0, 0.2, 0.5])
    shade_p = rng.choice([0.0, 0.0, 0.25, 0.5])
    # at most one spanning cell, in a table big enough for it
    span = None
    if rows * cols >= 4 and rng.random() < 0.35:
        span = (
            rng.choice(["colspan", "rowspan"]),
            rng.randrange(rows - 1),
            rng.randrange(cols - 1),
        )
    if border == "attribute":
        open_tag = '<table border="1">'
    elif border == "collapse":
        open_tag = '<table style="border-collapse: collapse">'
    else:
        open_tag = "<table>"
    cell_style = "border: 1px solid black" if border == "collapse" else ""
    covered: set[tuple[int, int]] = set()
    lines = [open_tag]
    for r in range(rows):
        cells = []
        for c in range(cols):
            if (r, c) in covered:
                continue
            tag = "th" if header and r == 0 else "td"
            attrs = []
            if span and (r, c) == span[1:]:
                kind = span[0]
                attrs.append(f'{kind}="2"')
                covered.add((r, c + 1) if kind == "colspan" else (r + 1, c))
            styles = [cell_style] if cell_style else []
            if rng.random() < shade_p:
                styles.append(f"background-color: {rng.choice(SHADES)}")
            if styles:
                attrs.append(f'style="{"; ".join(styles)}"')
            text = _content(rng)
            if tag == "td" and rng.random() < bold_p:
                text = f"<b>{text}</b>"
            cells.append(f"<{tag}{''.join(' ' + a for a in attrs)}>{text}</{tag}>")
        lines.append("<tr>" + "".join(cells) + "</tr>")
    lines.append("</table>")
    return "".join(lines)


def iter_markups(seed: int) -> Iterator[str]:
    """An endless, seeded stream of tables (possibly with repeats; the caller de-duplicates)."""
    rng = random.Random(f"tables-{seed}")
    while True:
        yield _table(rng)
