"""The export package's arrows: embed -> stream, writers; writers import neither; no cycle; no training code;
analysis (evaluate, profile) reads embedding files without loading the model side."""
import ast
import subprocess
import sys
from importlib.util import resolve_name
from pathlib import Path

import domainmae.export

EXPORT = Path(domainmae.export.__file__).parent


def _module(path: Path) -> str:
    parts = path.relative_to(EXPORT.parent.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, bool]]:
    """``(domainmae.export module imported, whether inside a function)`` for each relative import of ``path``."""
    tree = ast.parse(path.read_text())
    local = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
             for n in ast.walk(f)}  # fmt: skip
    package = _module(path) if path.name == "__init__.py" else _module(path).rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = resolve_name("." * node.level + (node.module or ""), package)
            targets = [base] if node.module else [f"{base}.{alias.name}" for alias in node.names]
            found += [(t, id(node) in local) for t in targets if t.startswith("domainmae.export")]
    return found


GRAPH = {_module(p): _imports(p) for p in EXPORT.rglob("*.py")}


def test_no_function_local_imports_of_export_modules():
    assert not {m: [t for t, local in edges if local] for m, edges in GRAPH.items() if any(x for _, x in edges)}


def test_writers_import_only_writers():
    for module, edges in GRAPH.items():
        if module.startswith("domainmae.export.writers"):
            assert all(t.startswith("domainmae.export.writers") for t, _ in edges), (module, edges)


def test_no_import_cycle():
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, " -> ".join([*path, module])
        if module not in done:
            for target, _ in GRAPH.get(module, []):
                visit(target, (*path, module))
            done.add(module)

    for module in GRAPH:
        visit(module, ())




def _loaded(code: str) -> list[str]:
    """Modules in ``sys.modules`` after running ``code`` in a fresh interpreter beside this checkout's package."""
    # Run beside this checkout's package, so that it, not an installed one, is imported.
    code += "; import sys; print(chr(10).join(sys.modules))"
    run = subprocess.run([sys.executable, "-c", code], cwd=EXPORT.parent.parent, capture_output=True, text=True, check=True)
    return run.stdout.split()


def test_import_loads_no_training_code():
    assert not [m for m in _loaded("import domainmae.export") if m.startswith("domainmae.train")]


def test_analysis_loads_no_model_data_readers_or_torch():
    # evaluate and profile read embedding files; the model side (embed, stream, models, the data readers,
    # torch) is embed's, so that analysis runs wherever the files are, without a model or its data.
    loaded = _loaded("import domainmae.export.evaluate, domainmae.export.profile")
    model_side = ("domainmae.export.embed", "domainmae.export.stream", "domainmae.models", "domainmae.train",
                  "domainmae.data", "domainmae.runtime", "domainmae.pipeline")  # fmt: skip
    assert not [m for m in loaded if m.split(".")[0] == "torch" or m.startswith(model_side)]
