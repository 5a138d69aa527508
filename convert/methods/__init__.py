"""RoPE extension methods. A new method is one module here plus one import line below."""
from ropeconvert.convert.methods._registry import METHODS, MethodInfo, build_spec, rope_method
from ropeconvert.convert.methods import linear, ntk, dynamic, yarn, longrope, llama3  # noqa: F401  (registers)
from ropeconvert.convert.methods import selfextend, dpe  # noqa: F401  (position-map methods)

__all__ = ["METHODS", "MethodInfo", "build_spec", "rope_method"]
