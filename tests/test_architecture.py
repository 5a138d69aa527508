"""The shape DESIGN.md and the README's "Architecture" section promise, checked on the source itself: small modules,
no import circles (not even through a function-level import), one key namespace, writers that never switch on a
method's name."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = {"ropeconvert": "ropeconvert", "convert": "ropeconvert.convert", "formats": "ropeconvert.formats",
            "validators": "ropeconvert.validators"}
MAX_LINES = 300


def _modules() -> dict[str, Path]:
    found = {}
    for folder, package in PACKAGES.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            parts = path.relative_to(REPO / folder).with_suffix("").parts
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            found[".".join((package, *parts))] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Every project module `name` imports, at module level or inside a function. Importing a submodule runs its
    parent packages' __init__ first, so an edge to one's own ancestor package is not a circle and is left out."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            submodules = {f"{base}.{alias.name}" for alias in node.names} & MODULES.keys()
            found.update(submodules or {base})
    ancestors = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
    return {m for m in found if m in MODULES and m != name and m not in ancestors}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_every_module_is_at_most_300_lines():
    long = {str(p.relative_to(REPO)): n for p in MODULES.values() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_no_module_imports_one_that_imports_it_back():
    graph = {name: _imports(name, path) for name, path in MODULES.items()}
    assert not _cycles(graph)


def test_the_cycle_finder_finds_a_circle():  # the test above can fail
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("writer", ["formats/hf_config.py", "formats/gguf_rope.py"])
def test_writers_switch_on_the_rope_kind_not_the_method_name(writer):
    source = (REPO / writer).read_text()
    # looking a method's own mapping up (METHODS.get(spec.method)) is what it should do; comparing names is not
    assert not re.findall(r"\.method\s*(==|!=)|\.method\s+(not\s+)?in\s*[(\[{]", source), \
        f"{writer} branches on a method's name"


def test_ropeconvert_gguf_keys_are_spelled_only_in_gguf_keys():
    """A `ropeconvert.*` metadata key literal anywhere else would be a second namespace (file names, format ids and
    module names are not keys)."""
    key = re.compile(r"""["']ropeconvert\.[a-z_]+(\.[a-z_]*)*["']|f["']ropeconvert\.\{""")
    spelled = []
    for name, path in MODULES.items():
        if name == "ropeconvert.formats.gguf_keys":
            continue
        for match in key.finditer(path.read_text()):
            literal = match.group(0).strip("\"'")
            if literal.endswith(".json") or literal in MODULES or literal.rstrip(".") in MODULES:
                continue
            spelled.append(f"{path.relative_to(REPO)}: {literal}")
    assert not spelled


def test_rope_tensor_names_are_gguf_pys():
    from gguf import MODEL_TENSOR, TENSOR_NAMES

    from ropeconvert.formats.gguf_keys import RopeTensors

    assert (RopeTensors.FREQS, RopeTensors.LONG, RopeTensors.SHORT) == tuple(
        TENSOR_NAMES[t] + ".weight" for t in (MODEL_TENSOR.ROPE_FREQS, MODEL_TENSOR.ROPE_FACTORS_LONG,
                                              MODEL_TENSOR.ROPE_FACTORS_SHORT))
