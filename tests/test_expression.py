"""The expression grammar: the documented forms parse; anything else raises the tool's own error."""
from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from latent_ops.expression import ExpressionError, parse

KNOWN = ["horse", "bird", "deer", "horse:0", "horse:1", "horse:2", "wings", "white"]


@pytest.mark.parametrize("text, expected", [
    ("horse+wings", {"horse": 1.0, "wings": 1.0}),
    ("horse+0.8*wings", {"horse": 1.0, "wings": 0.8}),
    ("horse:2+wings", {"horse:2": 1.0, "wings": 1.0}),
    ("0.6*horse+0.4*bird", {"horse": 0.6, "bird": 0.4}),
    ("deer+wings", {"deer": 1.0, "wings": 1.0}),
    ("horse-bird", {"horse": 1.0, "bird": -1.0}),
    ("0.5*(horse+bird) + wings*2", {"horse": 0.5, "bird": 0.5, "wings": 2.0}),
    ("horse/2 + horse/2 + -wings", {"horse": 1.0, "wings": -1.0}),
    ("HORSE + 1e-1*White", {"horse": 1.0, "white": 0.1}),
])
def test_documented_forms(text, expected):
    got = parse(text, KNOWN)
    assert got.keys() == expected.keys()
    assert all(abs(got[k] - expected[k]) < 1e-9 for k in expected)


@pytest.mark.parametrize("text, says", [
    ("horse+wigns", "unknown concept 'wigns' at column 7"),
    ("horse:7+wings", "unknown concept 'horse:7'"),
    ("horse+", "ends too early"),
    ("horse**2", "unexpected '*' at column 7"),
    ("horse wings", "unexpected 'wings' at column 7"),
    ("horse*bird", "two concepts cannot be multiplied"),
    ("horse+1", "a number cannot be added"),
    ("horse/bird", "cannot divide by a concept"),
    ("horse/0", "division by zero"),
    ("3*2", "names no concept"),
    ("horse-horse", "cancel out"),
    ("", "empty expression"),
    ("horse+$", "unexpected character '$'"),
])
def test_errors_say_where_and_list_known(text, says):
    with pytest.raises(ExpressionError) as error:
        parse(text, KNOWN)
    message = str(error.value)
    assert says in message
    assert "known concepts: bird, deer, horse, horse:0" in message
    assert "\n" not in message


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="horsebidwng:0123456789.+-*/() \t_eE$", max_size=30))
def test_any_string_parses_or_raises_expression_error(text):
    try:
        weights = parse(text, KNOWN)
    except ExpressionError:
        return
    assert weights and set(weights) <= set(KNOWN)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=20))
def test_any_unicode_parses_or_raises_expression_error(text):
    try:
        parse(text, KNOWN)
    except ExpressionError:
        pass


from autoencoder.cli import ConfigError
from autoencoder.config import TRAIN_RANGES, make_config

FUZZ_KNOWN = ["horse", "bird", "wings", "horse:0", "white"]
PIECES = st.sampled_from(["horse", "bird", "wings", "horse:0", "white", "+", "-", "*", "/", "(", ")", " ",
                          "0.8", "2", "1e999", "1e300", "0", ".5", "e", ":", "horse:9", "@", "\x00", "é"])


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=60), st.lists(PIECES, max_size=40).map("".join),
                 st.integers(0, 700).map(lambda n: "(" * n + "horse" + ")" * n)))
def test_any_string_parses_or_raises_the_one_line_error(text):
    try:
        weights = parse(text, FUZZ_KNOWN)
    except ExpressionError as error:
        assert "\n" not in str(error).replace(repr(text), "") and str(error)
        return
    assert weights and all(name in FUZZ_KNOWN for name in weights)
    assert all(math.isfinite(w) and 0 < abs(w) <= 100 for w in weights.values())


NUMBERS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**12, 10**12),
                    st.sampled_from(["nan", "inf", "-inf", "1e999", "1e9", "-1", "0", "2.5", "abc", "", "1e3"]))


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(TRAIN_RANGES)), NUMBERS)
def test_numeric_training_flags_are_accepted_in_range_or_refused_in_one_line(flag, value):
    try:
        config = make_config("smoke", **{flag: value})
    except ConfigError as error:
        assert f"--{flag}" in str(error) and "\n" not in str(error)
        return
    low, high = TRAIN_RANGES[flag]
    accepted = getattr(config, flag)
    assert math.isfinite(accepted) and low <= accepted <= high


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["n", "seed", "refine_steps", "refine_step_size", "refine_anchor", "strength", "temperature",
                        "chunk"]), NUMBERS)
def test_numeric_compose_flags_are_accepted_in_range_or_refused_in_one_line(flag, value):
    from latent_ops.compose_config import COMPOSE_RANGES, make_compose_config

    try:
        config = make_compose_config(**{flag: value})
    except ConfigError as error:
        assert f"--{flag}" in str(error) and "\n" not in str(error)
        return
    low, high = COMPOSE_RANGES[flag]
    assert low <= getattr(config, flag) <= high


from latent_ops.expression import REGIONS, TermParts, term_parts, to_text  # noqa: E402

AND_KNOWN = ["horse", "bird", "airplane", "wings", "bird:flight", "horse:0"]


@pytest.mark.parametrize("text, expected", [
    ("horse&bird+wings", {"horse&bird": 1.0, "wings": 1.0}),
    ("horse+wings@top", {"horse": 1.0, "wings@top": 1.0}),
    ("0.5*(horse&bird)+0.8*wings@top", {"horse&bird": 0.5, "wings@top": 0.8}),
    ("horse&0.5*bird&bird:flight", {"horse&0.5*bird&bird:flight": 1.0}),
    ("horse & bird & horse", {"2*horse&bird": 1.0}),
    ("bird:flight+wings@LEFT", {"bird:flight": 1.0, "wings@left": 1.0}),
])
def test_conjunctions_and_regions(text, expected):
    got = parse(text, AND_KNOWN)
    assert got.keys() == expected.keys() and all(abs(got[k] - expected[k]) < 1e-9 for k in expected)


def test_term_parts_split_every_kind_of_term():
    assert term_parts("horse") == TermParts("horse")
    assert term_parts("wings@top") == TermParts("wings", "top")
    assert term_parts("horse&0.5*bird:flight") == TermParts("", "", (("horse", 1.0), ("bird:flight", 0.5)))


@pytest.mark.parametrize("text, says", [
    ("horse&2", "a number cannot be one side"),
    ("horse&(bird+wings)", "each side of & is one weighted concept"),
    ("wings@top&bird@left", "a conjunction needs one part that is everywhere"),
    ("horse&horse", "& needs two different concepts"),
    ("wings@up", "unknown region 'up'; regions: top, bottom"),
    ("horse&brid", "unknown concept 'brid' at column 7"),
    ("wings@", "ends too early"),
])
def test_conjunction_and_region_errors_name_the_problem(text, says):
    with pytest.raises(ExpressionError, match=says.replace("(", r"\(").replace(")", r"\)")):
        parse(text, AND_KNOWN)


AND_PIECES = st.sampled_from(["horse", "bird", "wings", "bird:flight", "&", "@top", "@left", "+", "-", "*", "(",
                              ")", "0.5", "2", "3e-1", " "])


@settings(max_examples=400, deadline=None)
@given(st.lists(AND_PIECES, min_size=1, max_size=14).map("".join))
def test_what_parses_prints_back_to_the_same_expression(text):
    try:
        weights = parse(text, AND_KNOWN)
    except ExpressionError:
        return
    again = parse(to_text(weights), AND_KNOWN)
    assert again.keys() == weights.keys()
    assert all(math.isclose(again[k], weights[k], rel_tol=1e-12) for k in weights)
    for term in weights:
        parts = term_parts(term)
        # a conjunction's part keeps its region in its name (wings@top): the concept before @, the region after
        names = [n.partition("@")[0] for n, _ in parts.conjunction] or [parts.concept]
        regions = [n.partition("@")[2] for n, _ in parts.conjunction] or [parts.region]
        assert all(n in AND_KNOWN for n in names) and all(r in REGIONS or not r for r in regions)
