"""Self-contained HTML pages: an image embedded as base64, a CSV as an escaped table."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest
from figures_helpers import write_frames

from markup2im.errors import DataError
from markup2im.figures import gif, html


def test_html_page_embeds_image_and_table(tmp_path: Path) -> None:
    frames_dir = write_frames(tmp_path / "f", [0, 1])
    animation = tmp_path / "a.gif"
    gif.denoise_gif(frames_dir, animation)
    page = tmp_path / "a.html"
    html.html_page(animation, page, title="Denoising <math>")
    text = page.read_text(encoding="utf-8")
    match = re.search(r'src="data:image/gif;base64,([A-Za-z0-9+/=]+)"', text)
    assert match and base64.b64decode(match.group(1)) == animation.read_bytes()
    assert "Denoising &lt;math&gt;" in text

    table = tmp_path / "t.csv"
    table.write_text("method,dtw\nbaseline,1.5\n<b>ss</b>,1.2\n", encoding="utf-8")
    html.html_page(table, page)
    text = page.read_text(encoding="utf-8")
    assert text.count("<tr>") == 3 and "<td>baseline</td><td>1.5</td>" in text
    assert "&lt;b&gt;ss&lt;/b&gt;" in text and "<h1>t.csv</h1>" in text
    with pytest.raises(DataError, match="txt"):
        (tmp_path / "x.txt").write_text("x")
        html.html_page(tmp_path / "x.txt", page)
