"""Values read from users (configs, request bodies, overrides): type tests, since YAML and JSON
give bools where numbers are expected and Python counts a bool as an int; and the one YAML reader
(`read_yaml`), which refuses aliases, so that a few hundred bytes cannot expand to gigabytes
(a "billion laughs" alias bomb)."""

from __future__ import annotations

import functools
import json
import math
import re
from typing import Any


def is_number(value: Any) -> bool:
    """An int or a float, not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_finite_number(value: Any) -> bool:
    """An int or a float, not a bool, not inf or nan."""
    return is_number(value) and math.isfinite(value)


@functools.cache
def _loader() -> type:
    """Safe YAML with the booleans of YAML 1.2 (`true`/`false`, any case; `yes` is a string) and
    no aliases (`*name`): every node is written out once. (yaml is imported here, not by
    `import parcae`.)"""
    import yaml

    class Loader(yaml.SafeLoader):
        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                mark = self.peek_event().start_mark
                raise yaml.composer.ComposerError(
                    None, None, "aliases (*name) are not allowed; write the value out", mark
                )
            return super().compose_node(parent, index)

    Loader.yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:bool",
        re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
        list("tTfF"),
    )
    return Loader


def read_yaml(text: str | bytes) -> Any:
    """`text` parsed as YAML (see `_loader`); every problem, including bytes that are not UTF-8
    and nesting too deep for the parser, is a `yaml.YAMLError`."""
    import yaml

    try:
        return yaml.load(text, Loader=_loader())
    except RecursionError:
        raise yaml.YAMLError("nested too deeply") from None
    except UnicodeDecodeError as error:
        raise yaml.YAMLError(f"not UTF-8 text ({error})") from None


def parse_json(text: str | bytes) -> Any:
    """`text` parsed as JSON; every problem (not JSON, bytes that are not UTF-8, nesting too
    deep for the parser) is a ValueError with a one-line message."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except ValueError as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(getattr(error, "msg", None) or str(error)) from None
