"""The concept algebra of ``compose``: parse an expression into a weighted sum of concepts.

Grammar (lark, LALR): sums and differences of terms; a term is a concept, a number times
a term, or a parenthesised sum; unary minus; numbers may be written before or after a
concept (``0.8*wings``, ``wings*0.8``). Concepts are CIFAR-10 class names (``horse``),
clusters and named sources within a class (``horse:2``, ``bird:flight``) and directions
(``wings``, ``white``). Two more operators:

- ``a&b`` (binds tighter than ``+``, looser than ``*``): codes that are a AND b at once,
  drawn from the latent prior under both conditions (Composable Diffusion, Liu et al. 2022);
  each side a weighted concept, e.g. ``horse&0.5*bird``.
- ``concept@region``: a direction applied only to a region of a spatial code, e.g.
  ``wings@top``; regions are REGIONS. Inside a conjunction a region says where that part is
  asked for: ``horse&airplane@top`` is horse everywhere and airplane in the top half;
  ``horse&wings@back`` puts the winged classes just above the horse's back, found for each
  candidate (``back`` follows the subject, as does ``body``, its own cells; the other regions are fixed cells).

    horse+wings    horse+0.8*wings    horse:2+wings    0.6*horse+0.4*bird    horse-bird
    horse&bird+wings    horse+wings@top    0.5*(horse&bird)+0.8*wings@top
    horse&1.5*airplane@back    horse&wings@back&white@back    horse:white&bird:flight@above

The result is a linear form {term: weight}, where a term is a concept (``horse``), a concept
in a region (``wings@top``) or a conjunction (``horse&0.5*bird``, its parts in order); what
each stands for is the caller's business (``term_parts`` splits a term).

Example: ``python -m latent_ops.expression "0.5*(horse+bird)+wings"``
"""
from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from lark import Lark, Token, Transformer, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken, VisitError

from autoencoder.atomic import write_json
from autoencoder.cli import UserError, check_writable, command

GRAMMAR = r"""
    ?sum: conj
        | sum "+" conj      -> add
        | sum "-" conj      -> sub
    ?conj: product
        | conj "&" product  -> both
    ?product: unary
        | product "*" unary -> mul
        | product "/" unary -> div
    ?unary: atom
        | "-" unary         -> neg
        | "+" unary
    ?atom: NUMBER           -> number
        | CONCEPT           -> concept
        | CONCEPT "@" WORD  -> region
        | "(" sum ")"
    CONCEPT: /[A-Za-z_][A-Za-z0-9_]*(:[A-Za-z0-9_]+)?/
    WORD: /[A-Za-z_]+/
    NUMBER: /(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?/
    %ignore /\s+/
"""
_PARSER = Lark(GRAMMAR, start="sum", parser="lalr", propagate_positions=True)


MAX_LENGTH = 500  # characters; a longer expression is refused before parsing
MAX_NESTING = 50  # signs in a row, or parentheses open at once: more is refused before parsing
MAX_WEIGHT = 100.0  # a concept weighted beyond this leaves the latent space entirely
# Regions by their place in the picture, as (rows, columns) in quarters of its height and width: halves,
# the centre, the whole picture. On a code grid of any size they take the cells of that place
# (``region_slices``), so the grammar reads the same on a 4 x 4 and an 8 x 8 code.
REGIONS = {"top": ((0, 2), (0, 4)), "bottom": ((2, 4), (0, 4)), "left": ((0, 4), (0, 2)),
           "right": ((0, 4), (2, 4)), "centre": ((1, 3), (1, 3)), "all": ((0, 4), (0, 4)),
           "above": ((0, 1), (0, 4)),  # the top quarter, over the subject
           "back": ((0, 2), (0, 4)),  # follows the subject (FOLLOWING_REGIONS); these cells until it is found
           "body": ((1, 3), (0, 4))}  # the subject's own cells, followed likewise; the middle band until found
FOLLOWING_REGIONS = ("back", "body")  # placed per candidate from its own picture (latent_ops.placement)
QUARTERS = 4  # REGIONS count in quarters of the picture


def region_slices(region: str, grid: tuple[int, int]) -> tuple[slice, slice]:
    """The (rows, columns) of ``region`` on a code grid of ``grid`` cells (a multiple of 4 on each side)."""
    (r0, r1), (c0, c1) = REGIONS[region]
    rows, cols = grid
    return (slice(r0 * rows // QUARTERS, r1 * rows // QUARTERS), slice(c0 * cols // QUARTERS, c1 * cols // QUARTERS))


class ExpressionError(UserError, ValueError):
    """An expression that cannot be used; the message says where and lists the known concepts."""


@dataclass(frozen=True)
class LinearForm:
    """A number (``concepts`` empty) or a weighted sum of concepts, kept in first-seen order."""
    constant: float
    concepts: tuple[tuple[str, float], ...]

    def scaled(self, factor: float) -> "LinearForm":
        return LinearForm(self.constant * factor, tuple((n, w * factor) for n, w in self.concepts))

    def plus(self, other: "LinearForm") -> "LinearForm":
        weights = dict(self.concepts)
        for name, w in other.concepts:
            weights[name] = weights.get(name, 0.0) + w
        return LinearForm(self.constant + other.constant, tuple(weights.items()))

    @property
    def is_number(self) -> bool:
        return not self.concepts


class _Fail(Exception):
    def __init__(self, message: str, column: int):
        super().__init__(message)
        self.message, self.column = message, column


@v_args(meta=True)
class _ToLinearForm(Transformer):
    def __init__(self, known: set[str]):
        super().__init__()
        self.known = known

    def number(self, meta, children):
        value = float(children[0])
        if not math.isfinite(value) or abs(value) > 1e12:
            raise _Fail(f"the number {children[0].value[:20]!r} is too large", children[0].column)
        return LinearForm(value, ())

    def concept(self, meta, children):
        token: Token = children[0]
        name = token.lower()
        if self.known and name not in self.known:
            raise _Fail(f"unknown concept {token.value!r}", token.column)
        return LinearForm(0.0, ((name, 1.0),))

    def region(self, meta, children):
        form = self.concept(meta, children[:1])
        place: Token = children[1]
        if place.lower() not in REGIONS:
            raise _Fail(f"unknown region {place.value!r}; regions: {', '.join(REGIONS)}", place.column)
        return LinearForm(0.0, ((f"{form.concepts[0][0]}@{place.lower()}", 1.0),))

    def both(self, meta, children):
        parts: dict[str, float] = {}
        for side in children:
            if side.is_number or side.constant:
                raise _Fail("& joins concepts, e.g. horse&bird; a number cannot be one side", meta.column)
            if len(side.concepts) != 1:
                raise _Fail("each side of & is one weighted concept, e.g. horse&0.5*bird", meta.column)
            name, weight = side.concepts[0]
            split = term_parts(name)
            for part, w in split.conjunction or ((name, 1.0),):
                parts[part] = parts.get(part, 0.0) + w * weight
        if len(parts) < 2 or any(w == 0 for w in parts.values()):
            raise _Fail("& needs two different concepts with non-zero weights, e.g. horse&bird", meta.column)
        if all("@" in part for part in parts):
            raise _Fail("a conjunction needs one part that is everywhere, e.g. horse&airplane@top", meta.column)
        return LinearForm(0.0, ((conjunction_name(parts), 1.0),))

    def add(self, meta, children):
        return self._check_sum(children[0].plus(children[1]), meta)

    def sub(self, meta, children):
        return self._check_sum(children[0].plus(children[1].scaled(-1.0)), meta)

    def neg(self, meta, children):
        return children[0].scaled(-1.0)

    def mul(self, meta, children):
        left, right = children
        if not left.is_number and not right.is_number:
            raise _Fail("two concepts cannot be multiplied; scale a concept by a number, e.g. 0.8*wings",
                        meta.column)
        if left.is_number:
            return right.scaled(left.constant) if not right.is_number else LinearForm(left.constant * right.constant, ())
        return left.scaled(right.constant)

    def div(self, meta, children):
        left, right = children
        if not right.is_number:
            raise _Fail("cannot divide by a concept; divide by a number, e.g. wings/2", meta.column)
        if right.constant == 0:
            raise _Fail("division by zero", meta.column)
        return left.scaled(1.0 / right.constant)

    @staticmethod
    def _check_sum(form: LinearForm, meta) -> LinearForm:
        if form.constant != 0 and form.concepts:
            raise _Fail("a number cannot be added to a concept; scale it instead, e.g. 0.8*wings", meta.column)
        return form


@dataclass(frozen=True)
class TermParts:
    """What a term of a parsed expression is made of."""
    concept: str  # the concept's name ("" for a conjunction)
    region: str = ""  # a REGIONS name, or "" for the whole code
    conjunction: tuple[tuple[str, float], ...] = ()  # (concept, weight) of an a&b term, in order


def conjunction_name(parts: dict[str, float]) -> str:
    """The canonical term of a conjunction: ``horse&0.5*bird`` (weights 1 left out)."""
    return "&".join(name if weight == 1 else f"{weight:.17g}*{name}" for name, weight in parts.items())


def term_parts(term: str) -> TermParts:
    """Split a term of ``parse``'s result: ``horse``, ``wings@top`` or ``horse&0.5*bird``."""
    if "&" in term:
        parts = []
        for piece in term.split("&"):
            weight, _, name = piece.rpartition("*")
            parts.append((name, float(weight) if weight else 1.0))
        return TermParts("", "", tuple(parts))
    concept, _, region = term.partition("@")
    return TermParts(concept, region)


def to_text(weights: dict[str, float]) -> str:
    """An expression that parses back to ``weights`` (the inverse of ``parse``, up to layout)."""
    return "+".join(f"{w:.17g}*({term})" if "&" in term else f"{w:.17g}*{term}" for term, w in weights.items())


def _describe(error: UnexpectedInput, text: str) -> str:
    if isinstance(error, UnexpectedEOF) or (isinstance(error, UnexpectedToken) and error.token.type == "$END"):
        return "the expression ends too early (a concept or number is missing)"
    if isinstance(error, UnexpectedCharacters):
        return f"unexpected character {text[error.pos_in_stream]!r}"
    if isinstance(error, UnexpectedToken):
        return f"unexpected {error.token.value!r}"
    return "cannot parse"


def nesting(text: str) -> tuple[int, int]:
    """The longest run of signs (``+`` and ``-``, spaces between them allowed) and the deepest parenthesis."""
    run = longest = depth = deepest = 0
    for char in text:
        if char.isspace():
            continue
        run = run + 1 if char in "+-" else 0
        longest = max(longest, run)
        depth += (char == "(") - (char == ")")
        deepest = max(deepest, depth)
    return longest, deepest


def parse(text: str, known: Iterable[str] = ()) -> dict[str, float]:
    """{concept: weight} for an expression; ``known`` (when given) is the set of usable concept names.

    Raises ExpressionError naming the column where the expression went wrong and, when
    ``known`` is given, listing the known concepts.
    """
    known_set = {k.lower() for k in known}
    listing = f"; known concepts: {', '.join(sorted(known_set))}" if known_set else ""
    if not isinstance(text, str):
        raise ExpressionError(f"an expression is text like horse+wings, got {text!r}")
    if not text or not text.strip():
        raise ExpressionError(f"empty expression; write e.g. horse+wings{listing}")
    if len(text) > MAX_LENGTH:
        raise ExpressionError(f"the expression is {len(text)} characters long; at most {MAX_LENGTH} are accepted")
    signs, parentheses = nesting(text)
    if signs > MAX_NESTING:
        raise ExpressionError(f"the expression has {signs} signs in a row; at most {MAX_NESTING} are read (each minus "
                              f"flips the sign: write -horse or horse)")
    if parentheses > MAX_NESTING:
        raise ExpressionError(f"the expression nests {parentheses} parentheses deep; at most {MAX_NESTING}: write it "
                              f"with fewer parentheses")
    try:
        tree = _PARSER.parse(text)
        form = _ToLinearForm(known_set).transform(tree)
    except UnexpectedInput as error:
        column = getattr(error, "column", None)
        where = f" at column {column}" if isinstance(column, int) and column > 0 else " at the end"
        raise ExpressionError(f"{_describe(error, text)}{where} of {text!r}{listing}") from None
    except VisitError as error:
        fail = error.orig_exc
        if isinstance(fail, RecursionError):
            raise ExpressionError("the expression nests too deeply to read; write it with fewer signs and "
                                  "parentheses") from None
        if not isinstance(fail, _Fail):
            raise
        raise ExpressionError(f"{fail.message} at column {fail.column} of {text!r}{listing}") from None
    except RecursionError:
        raise ExpressionError("the expression nests too deeply; write it with fewer parentheses") from None
    if form.is_number:
        raise ExpressionError(f"{text!r} names no concept; write e.g. horse+wings{listing}")
    weights = {name: w for name, w in form.concepts if w != 0}
    for name, w in weights.items():
        if not math.isfinite(w) or abs(w) > MAX_WEIGHT:
            raise ExpressionError(f"{name} is weighted {w:g} in {text!r}; weights must lie within "
                                  f"+-{MAX_WEIGHT:g}")
    if not weights:
        raise ExpressionError(f"the concepts of {text!r} cancel out{listing}")
    return weights


@dataclass
class ExpressionConfig:
    expression: str = ""  # the expression to parse (the first argument on the command line)
    out: str = "outputs/expressions"  # where the parsed record is written, as <expression>.json


def parse_command(config: ExpressionConfig) -> dict[str, float]:
    """Parse the expression; the record (this config and the weighted concepts) goes to OUT/<expression>.json."""
    weights = parse(config.expression)
    name = re.sub(r"[^A-Za-z0-9+.\-_]", "", config.expression)[:60]
    digest = hashlib.sha1(config.expression.encode()).hexdigest()[:8]
    check_writable(Path(config.out))
    write_json({"config": asdict(config), "weights": weights}, Path(config.out) / f"{name}-{digest}.json")
    return weights


def main(expression: str = "", **flags) -> None:
    """Print the weighted concepts an expression stands for; every field of ExpressionConfig is a flag."""
    for name, weight in command(ExpressionConfig, dict(flags, expression=str(expression)), parse_command).items():
        print(f"{weight:+.3f} * {name}")


if __name__ == "__main__":
    from autoencoder.cli import fire_command

    fire_command(main)
