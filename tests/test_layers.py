"""The package's layers point one way: zoo <- data <- locality <- training <- predict (an entry point's module);
no private name crosses a module."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "convit"
# each layer may import itself and the layers listed before it
LAYERS = ("zoo", "data", "locality", "training", "predict")


def layer(module: str) -> str:
    """The layer of a dotted module name inside the package."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS[1:] else "zoo"


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, here: str):
    """(imported module, names, line) of every import in the file of module ``here``, lazy ones included."""
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, [], node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield target, [a.name for a in node.names], node.lineno


def backward_imports(path: Path, here: str) -> list[str]:
    """The imports of module ``here`` (file ``path``) that point to a later layer."""
    own, wrong = LAYERS.index(layer(here)), []
    for target, names, line in imports(path, here):
        for t in [target] + [f"{target}.{n}" for n in names if target == "convit"]:
            if t.split(".")[0] == "convit" and LAYERS.index(layer(t)) > own:
                wrong.append(f"{path.name}:{line} imports {t}")
    return wrong


def test_imports_point_one_way():
    wrong = [w for path in sorted(PACKAGE.rglob("*.py")) for w in backward_imports(path, module_name(path))]
    assert not wrong, "imports that point back up the layers:\n" + "\n".join(wrong)


def test_no_private_name_is_imported_across_modules():
    roots = [PACKAGE, PACKAGE.parent / "benchmarks", PACKAGE.parent / "experiments"]
    files = [p for root in roots for p in root.rglob("*.py")]
    files += [PACKAGE.parent / "train.py", PACKAGE.parent / "eval.py"]
    wrong = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in ("convit", ""):
                wrong += [f"{path.name}:{node.lineno} {a.name}" for a in node.names if a.name.startswith("_")]
    assert not wrong, "private names imported from another module:\n" + "\n".join(wrong)


def test_the_layer_test_sees_a_wrong_import(tmp_path):
    bad = tmp_path / "plots.py"
    bad.write_text("from ..errors import UserError\n\ndef f():\n    from ..training.checkpoint import read_log\n")
    assert backward_imports(bad, "convit.locality.plots") == ["plots.py:4 imports convit.training.checkpoint"]
    zoo = tmp_path / "model.py"
    zoo.write_text("from convit import data\nimport convit.locality\n")
    assert backward_imports(zoo, "convit.model") == [
        "model.py:1 imports convit.data",
        "model.py:2 imports convit.locality",
    ]
