"""Make `import ropeconvert` enough for transformers to know the DPE attention, without importing torch.

`AttentionInterface.register` lives in transformers.modeling_utils, which imports torch (seconds of start-up the
CLI should not pay for `--help`). So the registration waits for that module: if it is already imported it happens
now; otherwise a one-shot import hook runs it right after transformers.modeling_utils finishes executing — which is
always before `from_pretrained(..., attn_implementation=ATTN_NAME)` validates the name.
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import sys

ATTN_NAME = "ropeconvert_dpe"  # the attn_implementation a DPE / Self-Extend export runs under
_TARGET = "transformers.modeling_utils"


def install() -> None:
    if _TARGET in sys.modules:
        register()
    elif not any(isinstance(f, _RegisterAfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterImport())


def register() -> None:
    """Register the attention (and its mask policy) under ATTN_NAME. Idempotent."""
    from ropeconvert.validators.dpe_attention import register as _register

    _register(ATTN_NAME)


class _RegisterAfterImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: for transformers.modeling_utils it asks the other finders, then wraps the loader so
    the registration runs once the module is complete. It removes itself on first use."""

    def find_spec(self, name, path, target=None):
        if name != _TARGET:
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            try:
                register()
            except Exception as e:  # never break transformers itself: say why DPE exports will not load
                import warnings

                warnings.warn(f"ropeconvert could not register the {ATTN_NAME!r} attention: {e}", stacklevel=2)

        spec.loader.exec_module = exec_then_register
        return spec
