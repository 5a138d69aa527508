"""ropeconvert: context-extended RoPE checkpoints that real runtimes honour, with proof."""
__version__ = "0.1.0"

from ropeconvert.errors import RopeConvertError  # noqa: E402

__all__ = ["RopeConvertError", "__version__"]
