"""Property tests (hypothesis) of the expression grammar and of the config and recipe loaders: random text and bytes,
deep nesting, huge numbers, unicode digits and signs. Each input is either read or refused with a UserError (one
line for the person); nothing else escapes."""
from __future__ import annotations

import json
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autoencoder.cli import UserError, load_config
from latent_ops.compose import ComposeConfig, validate_compose_config
from latent_ops.expression import MAX_WEIGHT, parse

GRAMMAR_PIECES = st.sampled_from(["horse", "bird", "wings", "white", "horse:2", "@top", "@back", "&", "+", "-", "*",
                                  "/", "(", ")", "0.5", "2", "1e308", "1e-320", "٣", "−", "＋", " ", "..", "e"])
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def read_or_refuse(text: str) -> None:
    try:
        weights = parse(text)
    except UserError as error:
        assert "\n" not in str(error) and str(error)
    else:
        assert weights and all(abs(w) <= MAX_WEIGHT for w in weights.values())


@SETTINGS
@given(st.text(max_size=80))
def test_any_text_is_read_or_refused_in_one_line(text):
    read_or_refuse(text)


@SETTINGS
@given(st.lists(GRAMMAR_PIECES, max_size=40).map("".join))
def test_grammar_like_text_is_read_or_refused_in_one_line(text):
    read_or_refuse(text)


@SETTINGS
@given(st.integers(1, 200), st.integers(0, 120))
def test_deep_signs_and_parentheses_are_refused_not_crashed(signs, depth):
    read_or_refuse("-" * signs + "(" * depth + "horse" + ")" * depth)


RECIPE_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-10**30, 10**30), st.floats(allow_nan=True),
                          st.text(max_size=12), st.lists(st.integers(), max_size=3))


@SETTINGS
@given(st.dictionaries(st.sampled_from(["pool", "n", "guidance", "solver", "expression", "refine_top", "seed",
                                        "precision", "strength", "poool", "Pool"]), RECIPE_VALUES, max_size=6))
def test_any_recipe_is_read_or_refused_in_one_line(tmp_path_factory, values):
    file = tmp_path_factory.mktemp("recipe") / "compose.json"
    file.write_text(json.dumps(values))
    try:
        load_config(file, ComposeConfig, validate_compose_config, strict=True)
    except UserError as error:
        assert "\n" not in str(error) and str(file) in str(error)


@SETTINGS
@given(st.binary(max_size=200))
def test_any_bytes_as_a_recipe_are_refused_in_one_line(tmp_path_factory, data):
    file: Path = tmp_path_factory.mktemp("recipe") / "compose.json"
    file.write_bytes(data)
    try:
        load_config(file, ComposeConfig, validate_compose_config, strict=True)
    except UserError as error:
        assert "\n" not in str(error)
