"""The export package's arrows: embed -> stream, writers; writers import neither; no cycle; no training code."""
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


def test_import_loads_no_training_code():
    code = "import domainmae.export, sys; print([m for m in sys.modules if m.startswith('domainmae.train')])"
    # Run beside this checkout's package, so that it, not an installed one, is imported.
    run = subprocess.run([sys.executable, "-c", code], cwd=EXPORT.parent.parent, capture_output=True, text=True, check=True)
    assert run.stdout == "[]\n"
