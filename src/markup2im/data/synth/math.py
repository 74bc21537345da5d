"""Seeded random LaTeX formulas, tokenised with spaces like the im2latex-100k ``formula`` column.

They cover what the paper's math domain exercises: fractions, sub- and superscripts, roots,
Greek letters, big operators with limits, small matrices, and brackets of several sizes. Sizes
are kept so that most formulas fit 320 x 64 at the renderer's resolution.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from markup2im.errors import ConfigError

LETTERS = list("abcdefghkmnpqrstuvwxyz") + list("ABCDFGHKLMNPRSTUVXYZ")
GREEK = [
    r"\alpha", r"\beta", r"\gamma", r"\delta", r"\epsilon", r"\varepsilon", r"\zeta", r"\eta",
    r"\theta", r"\kappa", r"\lambda", r"\mu", r"\nu", r"\xi", r"\pi", r"\rho", r"\sigma", r"\tau",
    r"\phi", r"\varphi", r"\chi", r"\psi", r"\omega", r"\Gamma", r"\Delta", r"\Theta",
    r"\Lambda", r"\Sigma", r"\Phi", r"\Psi", r"\Omega",
]  # fmt: skip
FUNCTIONS = [r"\sin", r"\cos", r"\tan", r"\log", r"\ln", r"\exp", r"\det", r"\dim"]
BINARY = ["+", "-", r"\cdot", r"\times", r"\pm", r"\otimes", r"\cup", r"\cap"]
RELATIONS = ["=", "<", ">", r"\leq", r"\geq", r"\neq", r"\approx", r"\equiv", r"\sim", r"\to"]
BIG_OPERATORS = [r"\sum", r"\prod", r"\int", r"\oint", r"\bigcup", r"\bigoplus"]
MATRICES = ["pmatrix", "bmatrix", "vmatrix", "matrix"]
BRACKETS = [("(", ")"), ("[", "]"), (r"\{", r"\}"), (r"\langle", r"\rangle"), ("|", "|")]
SIZES = [r"\left", r"\bigl", r"\Bigl", r"\biggl", ""]


class _Formula:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def symbol(self) -> str:
        r = self.rng.random()
        if r < 0.45:
            return self.rng.choice(LETTERS)
        if r < 0.75:
            return self.rng.choice(GREEK)
        return str(self.rng.randint(0, 99) if self.rng.random() < 0.3 else self.rng.randint(0, 9))

    def group(self, tokens: str) -> str:
        return f"{{ {tokens} }}"

    def scripted(self) -> str:
        base = self.symbol()
        r = self.rng.random()
        sub = self.rng.choice([self.rng.choice(LETTERS[:14]), str(self.rng.randint(0, 9))])
        sup = self.rng.choice(["2", "n", "k", "-1", r"\prime", f"{self.symbol()} + 1"])
        if r < 0.35:
            return f"{base} _ {self.group(sub)}"
        if r < 0.7:
            return f"{base} ^ {self.group(sup)}"
        return f"{base} _ {self.group(sub)} ^ {self.group(sup)}"

    def atom(self, depth: int) -> str:
        r = self.rng.random()
        if depth <= 0 or r < 0.35:
            return self.symbol() if self.rng.random() < 0.5 else self.scripted()
        if r < 0.5:
            return rf"\frac {self.group(self.expr(depth - 1, 2))} {self.group(self.expr(depth - 1, 2))}"
        if r < 0.58:
            return rf"\sqrt {self.group(self.expr(depth - 1, 2))}"
        if r < 0.62:
            return rf"\sqrt [ {self.rng.choice(['3', 'n', 'k'])} ] {self.group(self.expr(depth - 1, 2))}"
        if r < 0.77:
            return self.bracketed(depth)
        if r < 0.87:
            return f"{self.rng.choice(FUNCTIONS)} {self.atom(depth - 1)}"
        return self.scripted()

    def bracketed(self, depth: int) -> str:
        left, right = self.rng.choice(BRACKETS)
        size = self.rng.choice(SIZES)
        inner = self.expr(depth - 1, 3)
        if size == r"\left":
            return rf"\left{left} {inner} \right{right}"
        if size:
            return f"{size}{left} {inner} {size[:-1]}r{right}"
        return f"{left} {inner} {right}"

    def expr(self, depth: int, max_terms: int) -> str:
        terms = [self.atom(depth) for _ in range(self.rng.randint(1, max_terms))]
        out = [terms[0]]
        for term in terms[1:]:
            if self.rng.random() < 0.25:
                out.append(term)  # implicit product
            else:
                out.extend([self.rng.choice(BINARY), term])
        return " ".join(out)

    def big_operator(self) -> str:
        op = self.rng.choice([*BIG_OPERATORS, r"\lim"])
        var = self.rng.choice(["i", "j", "k", "n", "x"])
        if op == r"\lim":
            target = self.rng.choice(["0", r"\infty", "a"])
            return rf"\lim _ {{ {var} \to {target} }} {self.expr(1, 2)}"
        if op in (r"\int", r"\oint"):
            lower, upper = self.rng.choice(
                [("0", "1"), ("a", "b"), ("0", r"\infty"), (r"- \infty", r"\infty")]
            )
            return rf"{op} _ {{ {lower} }} ^ {{ {upper} }} {self.expr(1, 2)} \, d {var}"
        start = self.rng.choice(["0", "1"])
        stop = self.rng.choice(["n", "N", r"\infty"])
        return f"{op} _ {{ {var} = {start} }} ^ {{ {stop} }} {self.expr(1, 2)}"

    def matrix(self) -> str:
        kind = self.rng.choice(MATRICES)
        rows, cols = self.rng.choice([(2, 2), (2, 3), (3, 1), (1, 3), (3, 3), (2, 1)])
        cells = [
            " & ".join(
                self.symbol() if self.rng.random() < 0.7 else self.scripted() for _ in range(cols)
            )
            for _ in range(rows)
        ]
        body = r" \\ ".join(cells)
        return rf"\begin{{{kind}}} {body} \end{{{kind}}}"

    def formula(self) -> str:
        r = self.rng.random()
        if r < 0.2:
            body = self.big_operator()
        elif r < 0.32:
            body = self.matrix()
        else:
            body = self.expr(self.rng.choice([1, 2, 2, 3]), 3)
        relation = self.rng.choice(RELATIONS)
        shape = self.rng.random()
        if shape < 0.25:  # "lhs = body", the most common shape in papers
            lhs = self.scripted() if self.rng.random() < 0.5 else self.symbol()
            return f"{lhs} {relation} {body}"
        if shape < 0.45:
            return f"{body} {relation} {self.expr(self.rng.choice([1, 2]), 2)}"
        return body

    # -- the "simple" level: short one-line formulas for models trained in minutes on a CPU --
    def simple_atom(self) -> str:
        base = self.rng.choice(SIMPLE_SYMBOLS)
        r = self.rng.random()
        if r < 0.6:
            return base
        if r < 0.85:
            return f"{base}^{self.rng.choice('23n')}"
        return f"{base}_{self.rng.choice('01k')}"

    def simple_formula(self) -> str:
        terms = [self.simple_atom() for _ in range(self.rng.randint(1, 3))]
        out = terms[0]
        for term in terms[1:]:
            out += self.rng.choice(SIMPLE_BINARY) + term
        if self.rng.random() < 0.6:
            out += "=" + self.simple_atom()
        return out


SIMPLE_SYMBOLS = list("0123456789abcnxyz")
SIMPLE_BINARY = ["+", "-"]
MAX_TOKENS = 60  # longer formulas would mostly be shrunk to fit 320 x 64
# "standard": the paper-like mix above (fractions, roots, operators with limits, matrices,
# brackets), space-separated like im2latex-100k; "simple": up to three terms of a digit or
# letter with an optional one-character super- or subscript, joined by + and -, and an optional
# "= term", written compactly ("x^2+3-y_1=n", LaTeX needs no spaces or braces there), so that
# almost every character of the markup is one glyph: a CPU model learns to draw these in minutes.
DIFFICULTIES: tuple[str, ...] = ("standard", "simple")


def iter_markups(seed: int, difficulty: str = "standard") -> Iterator[str]:
    """An endless, seeded stream of formulas (possibly with repeats; the caller de-duplicates)."""
    if difficulty not in DIFFICULTIES:
        raise ConfigError(
            f"unknown math difficulty {difficulty!r}; known: {', '.join(DIFFICULTIES)}"
        )
    # the standard stream keeps its original seeding, so existing datasets stay as they are
    rng = random.Random(f"math-{seed}" if difficulty == "standard" else f"math-{difficulty}-{seed}")
    maker = _Formula(rng)
    make = maker.formula if difficulty == "standard" else maker.simple_formula
    while True:
        formula = make()
        if len(formula.split()) <= MAX_TOKENS:
            yield formula
