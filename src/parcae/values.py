"""Type tests for values read from users (configs, request bodies, overrides): YAML and JSON give
bools where numbers are expected, and Python counts a bool as an int."""

from __future__ import annotations

import math
from typing import Any


def is_number(value: Any) -> bool:
    """An int or a float, not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_finite_number(value: Any) -> bool:
    """An int or a float, not a bool, not inf or nan."""
    return is_number(value) and math.isfinite(value)
