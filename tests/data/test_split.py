"""Train/val split: deterministic per document, close to the requested fraction."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from parcae.data.split import check_val_fraction, split_of
from parcae.errors import ConfigError


@given(st.text(), st.floats(0.0, 0.999))
def test_split_depends_only_on_the_text_and_fraction(text, fraction):
    assert split_of(text, fraction) == split_of(str(text), fraction)


@given(st.text(), st.floats(0.0, 0.5), st.floats(0.0, 0.5))
def test_a_larger_fraction_only_moves_documents_into_val(text, a, b):
    low, high = sorted((a, b))
    assert not (split_of(text, low) == "val" and split_of(text, high) == "train")


def test_fraction_of_val_documents_is_close_to_requested():
    documents = [f"document number {i}" for i in range(20_000)]
    share = sum(split_of(text, 0.1) == "val" for text in documents) / len(documents)
    assert 0.09 < share < 0.11


def test_zero_fraction_puts_everything_in_train():
    assert all(split_of(f"doc {i}", 0.0) == "train" for i in range(1000))


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 2.0])
def test_fraction_outside_unit_interval_is_refused(fraction):
    with pytest.raises(ConfigError, match="val fraction"):
        check_val_fraction(fraction)
