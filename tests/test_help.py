"""Every flag of every entry point's --help says what it does, its default and its allowed values.

Each entry point builds its parser inside the function that parses; the test stops that function at its
`parse_args` (or `parse_known_args`) call and reads the parser it built.
"""

import argparse
import importlib
import importlib.util
import sys

import pytest
from conftest import ROOT


class Caught(Exception):
    def __init__(self, parser):
        self.parser = parser


def parser_of(function, monkeypatch) -> argparse.ArgumentParser:
    """The parser `function([])` builds, caught at its first parse."""

    def catch(self, *args, **kwargs):
        raise Caught(self)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", catch)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", catch)
    with pytest.raises(Caught) as caught:
        function([])
    return caught.value.parser


def script(path: str):
    """A script's module, imported from its file (the benchmarks are not a package)."""
    sys.path.insert(0, str(ROOT))
    spec = importlib.util.spec_from_file_location(path.replace("/", "_")[:-3], ROOT / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def train_parse(argv):
    from convit.training.cli import build_parser

    return build_parser().parse_known_args(argv)


def entry_points():
    """(name, function that builds its parser and parses argv)."""
    from convit.training import evaluate

    yield "train.py", train_parse
    yield "eval.py", evaluate.parse_args
    yield "python -m convit.locality", importlib.import_module("convit.locality.__main__").build_parser().parse_args
    for name in ("ablations", "data_efficiency", "from_vit", "cluttered"):
        yield f"experiments.{name}.run", importlib.import_module(f"experiments.{name}.run").parse_args
    yield "experiments.transfer.run", importlib.import_module("experiments.transfer.run").main
    for path in sorted(str(p.relative_to(ROOT)) for p in (ROOT / "benchmarks").glob("bench_*.py")):
        yield path, script(path).main


def problems(parser: argparse.ArgumentParser) -> list[str]:
    """Every flag without one line of help, without its default shown, or without its allowed values."""
    found = []
    formatter = parser._get_formatter()  # noqa: SLF001 (argparse's own expansion of %(default)s and friends)
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
            continue
        flag = "/".join(action.option_strings) or action.dest
        text = formatter._expand_help(action) if action.help else ""
        if not text.strip():
            found.append(f"{flag}: no help")
            continue
        default = action.default
        if default not in (None, False, argparse.SUPPRESS, [], "") and not isinstance(
            action, argparse._StoreTrueAction
        ):
            shown = {str(default), str(default).replace(str(ROOT) + "/", "")}  # a path inside the clone, relative
            if isinstance(default, list):
                shown.add(" ".join(map(str, default)))
            if "default" not in text or not any(s in text for s in shown):
                found.append(f"{flag}: default {default!r} not shown")
        if action.choices and action.metavar is not None:
            missing = [c for c in action.choices if str(c) not in text]
            if missing:
                found.append(f"{flag}: allowed values {missing} not shown")
    return found


@pytest.mark.parametrize("name", [name for name, _ in entry_points()])
def test_every_flag_explains_itself(name, monkeypatch):
    function = dict(entry_points())[name]
    parser = parser_of(function, monkeypatch)
    assert not problems(parser), f"{name}: " + "; ".join(problems(parser))
    usage = parser.format_usage()
    assert "usage:" in usage
