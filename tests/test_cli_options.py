"""Options are declared once: every long flag has one declaration in the package source (a typer.Option literal, a
shared alias, an options dataclass field or a method knob), a flag several commands share is the same option in
each, every method knob comes from the registry + convert/methods/knobs.py, and search refuses an option the
chosen method does not read."""
from __future__ import annotations

import ast
import dataclasses
from collections import Counter
from pathlib import Path

import pytest
import typer

from helpers import assert_one_line_error, run_cli
from ropeconvert.cli import app
from ropeconvert.cli_options import SHARED, cli_type, flag
from ropeconvert.convert.methods import METHODS, knobs
from ropeconvert.convert.options import ConvertOptions
from ropeconvert.convert.search.options import SearchOptions, foreign

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = [p for d in ("ropeconvert", "convert", "formats", "validators") for p in (ROOT / d).rglob("*.py")]


def option_literals() -> Counter:
    """Long flags written as string literals in typer.Option(...) calls, over the whole package."""
    found: Counter = Counter()
    for path in PACKAGE:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "Option":
                for arg in node.args:
                    if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and arg.value.startswith("--"):
                        found.update(arg.value.split("/"))  # "--truncate/--sliding" declares both
    return found


def generated() -> Counter:
    """Long flags declared by a name: a method knob, or an options dataclass field that is neither a shared alias
    nor a knob (its flag is `--field-name`, or the declarations its metadata gives)."""
    from ropeconvert.validators.options import CommandInputs, ValidateOptions

    found = Counter(flag(n) for n in knobs.cli_names())
    for cls in (ConvertOptions, SearchOptions, ValidateOptions, CommandInputs):
        for f in dataclasses.fields(cls):
            meta = f.metadata.get("cli", {})
            name = meta.get("name") or f.name
            if not meta.get("flag", True) or meta.get("argument") or name in SHARED or name in knobs.KNOBS:
                continue
            found.update(d for decl in meta.get("decls") or (flag(name),) for d in decl.split("/") if d[:2] == "--")
    return found


def commands() -> dict:
    group = typer.main.get_command(app)
    return {name: cmd for name, cmd in group.commands.items()}


def long_flags(param) -> list[str]:
    return [o for o in (*param.opts, *param.secondary_opts) if o.startswith("--")]


def test_every_long_flag_has_one_declaration():
    declared = option_literals() + generated()
    in_app = {f for cmd in commands().values() for p in cmd.params for f in long_flags(p)}
    assert "--population" in in_app and "--beta-fast" in in_app and "--quiet" in in_app  # the walk sees them
    twice = {f: n for f, n in declared.items() if n > 1}
    assert not twice, f"declared more than once: {twice}"
    missing = sorted(in_app - set(declared) - {"--help"})
    assert not missing, f"flags with no declaration found by this test: {missing}"


def test_shared_flags_are_one_option():
    """A flag on several commands has the same parameter name and type in each (one alias, maybe other help)."""
    seen: dict[str, set] = {}
    users: Counter = Counter()
    for name, cmd in commands().items():
        for p in cmd.params:
            for f in long_flags(p):
                seen.setdefault(f, set()).add((p.name, p.bare_type(), p.is_flag))
                users[f] += 1
    assert all(users[f] >= 2 for f in ("--quiet", "--json", "--out", "--seed", "--device", "--window", "--factor"))
    differ = {f: forms for f, forms in seen.items() if len(forms) > 1}
    assert not differ, differ


def test_every_method_parameter_is_a_knob_with_a_convert_flag():
    convert = {p.name: p for p in commands()["convert"].params}
    params = {p for _, m in METHODS.items() for p in m.params}
    assert {"factor", "target_context", "beta_fast", "dpe_map"} <= params
    assert params - set(knobs.KNOBS) == set(), "add these to convert/methods/knobs.py"
    for name in params:
        k = knobs.KNOBS[name]
        if not k.cli:  # API only: no value a flag can carry
            assert cli_type(knobs.annotation_of(name)) is None, name
            assert name not in convert
            continue
        option = convert[name]
        assert option.opts[0] == flag(name) and option.help == knobs.help_of(name) and k.help[1:] in option.help
        assert set(k.shorts) <= set(option.opts)
        takers = knobs.takers(name)
        assert option.help.startswith("/".join(takers) + ":") or len(takers) == len(METHODS)
    assert convert["beta_fast"].help.startswith("yarn: ") and convert["factor"].help.startswith("Scale s")
    assert convert["factor"].bare_type() == "float" and convert["window"].bare_type() == "int"
    assert convert["allow_non_monotone"].is_flag and convert["factors"].bare_type() == "Path"


def test_convert_flags_are_convert_options_fields():
    """Every convert flag is a ConvertOptions field, a knob, one of the two printing flags, or --corpus (the other
    spelling of the `text` field, as in search)."""
    fields = {f.name for f in dataclasses.fields(ConvertOptions)}
    names = {p.name for p in commands()["convert"].params}
    assert names - fields - set(knobs.cli_names()) == {"quiet", "as_json", "corpus"}
    assert fields - names == {"knobs", "progress"}


def test_search_flags_and_readers():
    names = {p.name for p in commands()["search"].params}
    fields = {f.name for f in dataclasses.fields(SearchOptions)}
    assert names - fields == {"corpus", "quiet", "as_json"}  # --text/--corpus fill `text`, --quiet `progress`
    assert fields - names == {"progress"}
    assert foreign("dpe") == ["population", "generations", "patience", "documents", "short", "short_max",
                              "max_factor", "critical_dim", "stop_after"]
    assert foreign("longrope") == foreign("longrope2") == ["window", "groups", "topk", "lengths", "fixed_scale",
                                                           "samples"]


def test_dpe_search_refuses_population(tmp_path):
    proc = run_cli("search", "./missing-model", "--method", "dpe", "-t", "1024", "--population", "8", cwd=tmp_path)
    line = assert_one_line_error(proc, "--population")
    assert line == ("error: --population does not apply to search --method dpe (only to --method longrope/longrope2)"
                    " — drop it, or choose the method it belongs to")


@pytest.mark.parametrize("command", ["", "convert", "search"])
def test_help_lists_every_flag_with_help(command):
    cmd = typer.main.get_command(app) if not command else commands()[command]
    proc = run_cli(*([command] if command else []), "--help", env={"COLUMNS": "200", "TERMINAL_WIDTH": "200"})
    assert proc.returncode == 0, proc.stderr
    for p in cmd.params:
        for f in long_flags(p):
            assert f in proc.stdout, f
            assert f == "--help" or (p.help and len(p.help) > 8), (f, p.help)
