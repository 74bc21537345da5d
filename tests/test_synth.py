"""Seeded synthetic markup: reproducible, varied, and drawable by the real renderers."""

from __future__ import annotations

import re

import pytest
from rdkit import Chem

from markup2im.data.render import render_markups
from markup2im.data.synth import generate
from markup2im.data.synth.molecules import shipped_smiles, shipped_smiles_path
from markup2im.errors import DataError

DOMAINS = ["math", "tables", "music", "molecules"]


@pytest.mark.parametrize("domain", DOMAINS)
def test_generators_are_seeded_distinct_and_prefix_stable(domain):
    first = generate(domain, 30, seed=5)
    assert first == generate(domain, 30, seed=5)
    assert len(set(first)) == 30
    assert generate(domain, 12, seed=5) == first[:12]  # more data extends, never reshuffles
    assert generate(domain, 30, seed=6) != first


def test_math_covers_the_paper_ingredients():
    text = "\n".join(generate("math", 400, seed=0))
    for pattern in [
        r"\\frac \{",
        r"_ \{",
        r"\^ \{",
        r"\\sqrt \{",
        r"\\sqrt \[",
        r"\\(alpha|beta|gamma|theta|lambda|pi|sigma|omega)",
        r"\\(sum|prod|int) _ \{ .* \} \^ \{",
        r"\\lim _ \{",
        r"\\begin\{(pmatrix|bmatrix|vmatrix|matrix)\}",
        r"\\left\S+ .* \\right",
        r"\\(bigl|Bigl|biggl)",
    ]:
        assert re.search(pattern, text), pattern


def test_tables_cover_borders_bold_shading_and_spans():
    text = "\n".join(generate("tables", 300, seed=0))
    for needle in [
        'border="1"',
        "border-collapse",
        "<table><tr>",
        "<b>",
        "<th",
        "background-color",
        'colspan="2"',
        'rowspan="2"',
    ]:
        assert needle in text, needle
    rows = [m.count("<tr>") for m in generate("tables", 300, seed=0)]
    assert set(rows) == {1, 2, 3}


def test_music_covers_clefs_keys_times_durations_accidentals_beams_rests():
    text = "\n".join(generate("music", 300, seed=0))
    for pattern in [
        r"\\clef treble",
        r"\\clef bass",
        r"\\clef alto",
        r"\\key \w+ \\minor",
        r"\\key \w+ \\major",
        r"\\time (2/4|3/4|4/4|3/8|6/8)",
        r"[a-g](is|es)['|,]*\d",
        r"\d\[",
        r"\]",
        r"\br\d",
        r"\d\.",
        r"[a-g]['|,]*1\b",
        r"16",
    ]:
        assert re.search(pattern, text), pattern


def test_molecules_are_real_smiles_shipped_with_rdkit():
    path = shipped_smiles_path()
    assert path.name == "first_5K.smi" and path.is_file()
    smiles = shipped_smiles()
    assert len(smiles) > 4000
    sample = generate("molecules", 50, seed=0)
    assert set(sample) <= set(smiles)
    parsed = [Chem.MolFromSmiles(s) for s in sample]
    assert sum(m is not None for m in parsed) >= 45
    with pytest.raises(DataError, match="only .* distinct items"):
        generate("molecules", len(smiles) + 1, seed=0)


@pytest.mark.parametrize(("domain", "count"), [("math", 24), ("tables", 6), ("molecules", 24)])
def test_generated_markup_renders(domain, count):
    items = render_markups(domain, generate(domain, count, seed=1), progress=False)
    ok = [i for i in items if i.ok]
    assert len(ok) >= 0.9 * count, [i.error for i in items if not i.ok]
    assert sum(i.shrunk for i in ok) <= 0.25 * count


@pytest.mark.slow
def test_generated_music_renders_on_one_staff():
    items = render_markups("music", generate("music", 4, seed=1), progress=False)
    assert all(i.ok for i in items), [i.error for i in items]
    assert sum(i.shrunk for i in items) <= 1


def test_simple_math_is_short_seeded_and_separate_from_standard():
    simple = generate("math", 200, seed=0, difficulty="simple")
    assert simple == generate("math", 200, seed=0, difficulty="simple")
    assert len(set(simple)) == 200
    assert generate("math", 40, seed=0) == generate("math", 40, seed=0, difficulty="standard")
    assert simple[:20] != generate("math", 20, seed=0)
    for formula in simple:
        # compact: one character per glyph, at most 4 terms with one-character scripts
        assert re.fullmatch(r"[0-9a-z^_+=-]{1,15}", formula), formula
    for piece in ("^", "_", "+", "-", "="):
        assert any(piece in f for f in simple), piece


def test_unknown_difficulty_names_the_known_ones():
    from markup2im.errors import ConfigError

    with pytest.raises(ConfigError, match="difficulty 'hard'.*standard, simple"):
        generate("math", 3, difficulty="hard")
    with pytest.raises(ConfigError, match="tables generator has no difficulty 'simple'"):
        generate("tables", 3, difficulty="simple")
