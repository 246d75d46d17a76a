"""The built wheel carries the built-in recipes, configs and demo samples; the metadata tells the truth."""
from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from email.parser import Parser
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
import yaml

import domainmae
from domainmae.recipes import CONFIGS_DIR, RECIPES_DIR, SAMPLES_DIR, bundled_sample_path, list_recipes, load_recipe

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
# The top-level folders and where setup.py installs them inside the package.
BUILTIN = {"recipes": "domainmae/_builtin/recipes", "configs": "domainmae/_builtin/configs",
           "datasets/samples": "domainmae/_builtin/samples"}  # fmt: skip
SKIP = shutil.ignore_patterns(".git", "build", "dist", "runs", "*.egg-info", "__pycache__", ".pytest_cache")


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(requirement: str) -> str:
    return _norm(re.split(r"[\s<>=!~;\[(]", requirement, maxsplit=1)[0])


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    """``pip wheel`` of a clean copy of the checkout (an in-tree build would reuse ./build)."""
    tmp = tmp_path_factory.mktemp("wheel")
    shutil.copytree(REPO, tmp / "src", ignore=SKIP)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(tmp / "out"),
                    str(tmp / "src")], check=True)  # fmt: skip
    (path,) = (tmp / "out").glob("domainmae-*.whl")
    with zipfile.ZipFile(path) as zf:
        yield zf


@pytest.mark.slow
def test_wheel_holds_every_recipe_config_and_sample(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    for source, target in BUILTIN.items():
        expected = {f"{target}/{p.relative_to(REPO / source).as_posix()}" for p in _files(REPO / source)}
        assert expected, source
        assert not expected - names, f"{source} files missing from the wheel: {sorted(expected - names)}"
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


@pytest.mark.slow
def test_wheel_holds_the_files_every_demo_section_names(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    demos = 0
    for recipe in sorted((REPO / "recipes").glob("*.yaml")):
        path = ((yaml.safe_load(recipe.read_text()).get("demo") or {}).get("data") or {}).get("path")
        if not path:
            continue
        demos += 1
        assert path.startswith("datasets/samples/"), f"{recipe.name}: demo data outside the bundled samples"
        inside = f"domainmae/_builtin/samples/{path.removeprefix('datasets/samples/')}"
        assert inside in names or any(n.startswith(inside + "/") for n in names), f"{recipe.name}: {path}"
    assert demos >= 2


@pytest.mark.slow
def test_wheel_holds_every_subpackage_and_true_metadata(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    for init in (REPO / "domainmae").rglob("__init__.py"):
        assert init.relative_to(REPO).as_posix() in names
    assert "domainmae/py.typed" in names  # PEP 561: the annotations are for users' type checkers too
    (meta,) = [n for n in names if n.endswith(".dist-info/METADATA")]
    metadata = Parser().parsestr(wheel.read(meta).decode())
    assert metadata["Requires-Python"] == ">=3.11"  # zarr 3 needs 3.11
    assert metadata["Version"] == PYPROJECT["project"]["version"]


def test_builtin_folders_are_the_checkout_folders_in_an_editable_install() -> None:
    # Editable (pip install -e .) maps domainmae._builtin.* onto the top-level folders: one copy each.
    assert RECIPES_DIR.resolve() == (REPO / "recipes").resolve()
    assert CONFIGS_DIR.resolve() == (REPO / "configs").resolve()
    assert SAMPLES_DIR.resolve() == (REPO / "datasets" / "samples").resolve()
    assert set(list_recipes()) == {p.stem for p in (REPO / "recipes").glob("*.yaml")}


def test_demo_paths_name_the_bundled_samples_whatever_the_working_directory(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = Path(load_recipe("cellpainting", demo=True).data.path)
    assert path.is_absolute() and path.is_file() and SAMPLES_DIR in path.parents
    assert bundled_sample_path("datasets/samples/bigearthnet-mm") == str(SAMPLES_DIR / "bigearthnet-mm")
    assert bundled_sample_path("my/plate/load_data.csv") == "my/plate/load_data.csv"  # like --data: from the CWD


def test_version_comes_from_the_installed_metadata() -> None:
    assert domainmae.__version__ == PYPROJECT["project"]["version"]


def _third_party_imports() -> set[str]:
    found = set()
    for source in (REPO / "domainmae").rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - {"domainmae", "__future__"}


def test_every_third_party_import_is_declared() -> None:
    project = PYPROJECT["project"]
    declared = {_requirement_name(r) for r in project["dependencies"]}
    optional = {_requirement_name(r) for extra, reqs in project["optional-dependencies"].items() if extra != "dev"
                for r in reqs}  # fmt: skip
    dists = packages_distributions()
    for module in sorted(_third_party_imports()):
        names = {_norm(d) for d in dists.get(module, [module])}
        assert names & (declared | optional), f"domainmae imports {module} ({names}); pyproject.toml lacks it"


@pytest.mark.slow  # a fresh interpreter importing torch and timm
def test_torchvision_is_declared_because_timm_imports_it() -> None:
    # domainmae never imports torchvision; timm does on import. When it stops, drop the dependency.
    assert "torchvision" not in _third_party_imports()
    code = "import sys, timm.layers; print('torchvision' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "True"
