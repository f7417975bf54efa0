"""Register parcae with transformers' Auto classes without importing transformers.

`import parcae` calls `register_with_transformers()`. transformers costs seconds to import, so
nothing is imported here: the config class is registered with `AutoConfig` when transformers'
`configuration_auto` module finishes loading, and the model class with `AutoModelForCausalLM`
when `modeling_auto` does (at once for a module already loaded). Without transformers, nothing
happens.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from collections.abc import Callable


def _register_config() -> None:
    from transformers import AutoConfig

    from parcae.hf.configuration import MODEL_TYPE, ParcaeHFConfig

    try:
        AutoConfig.register(MODEL_TYPE, ParcaeHFConfig)
    except ValueError:  # already registered
        pass


def _register_model() -> None:
    from transformers import AutoModelForCausalLM

    from parcae.hf.configuration import ParcaeHFConfig
    from parcae.hf.transformers import ParcaeForCausalLM

    _register_config()
    try:
        AutoModelForCausalLM.register(ParcaeHFConfig, ParcaeForCausalLM)
    except ValueError:  # already registered
        pass


HOOKS: dict[str, Callable[[], None]] = {
    "transformers.models.auto.configuration_auto": _register_config,
    "transformers.models.auto.modeling_auto": _register_model,
}


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs HOOKS[name] right after module `name` has executed."""

    def find_spec(self, name, path=None, target=None):
        hook = HOOKS.get(name)
        if hook is None:
            return None
        sys.meta_path.remove(self)  # find the real spec with the other finders
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        execute = spec.loader.exec_module

        def exec_module(module):
            execute(module)
            _run(hook)

        spec.loader.exec_module = exec_module
        return spec


def _run(hook: Callable[[], None]) -> None:
    try:
        hook()
    except ImportError:  # a transformers without the classes we need: leave it alone
        pass


def register_with_transformers() -> None:
    """Register now for modules already imported, and after import for the others."""
    for name, hook in HOOKS.items():
        if name in sys.modules:
            _run(hook)
    if not any(isinstance(finder, _AfterImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport())
