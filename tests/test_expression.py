"""The expression grammar: the documented forms parse; anything else raises the tool's own error."""
from __future__ import annotations

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
