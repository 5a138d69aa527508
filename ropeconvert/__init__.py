"""ropeconvert: context-extended RoPE checkpoints that real runtimes honour, with proof."""
__version__ = "0.1.0"

from ropeconvert.errors import RopeConvertError  # noqa: E402
from ropeconvert.validators.dpe_register import ATTN_NAME as DPE_ATTENTION, install as _install_dpe  # noqa: E402

# DPE / Self-Extend exports run under attn_implementation="ropeconvert_dpe": registered with transformers as soon as
# transformers.modeling_utils is imported (an import hook; `import ropeconvert` itself stays free of torch)
_install_dpe()

__all__ = ["DPE_ATTENTION", "RopeConvertError", "__version__"]
