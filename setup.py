"""Which packages go into the wheel (everything else about the project is in pyproject.toml).

The built-in recipes, configs and demo samples have ONE copy each: the top-level folders ``recipes/``,
``configs/`` and ``datasets/samples/`` that users read and edit. They are installed inside the package as
``domainmae._builtin.recipes|configs|samples`` and read with ``importlib.resources``, so a wheel install works
from any directory. The folders carry an empty ``__init__.py`` because setuptools' editable finder maps a
``package_dir`` entry only when it holds one (pypa/setuptools#4943); they are not code.

This lives in setup.py because pyproject.toml cannot list ``packages.find`` results plus these mapped
packages: subpackages added to ``domainmae/`` are found without editing anything, and so are new recipes,
configs and sample files (the globs below).
"""
from setuptools import find_packages, setup

BUILTIN = {
    "domainmae._builtin.recipes": "recipes",
    "domainmae._builtin.configs": "configs",
    "domainmae._builtin.samples": "datasets/samples",
}

setup(
    packages=find_packages(include=["domainmae", "domainmae.*"]) + list(BUILTIN),
    package_dir=BUILTIN,
    package_data={
        "domainmae": ["py.typed"],  # PEP 561: type checkers read the package's annotations
        "domainmae._builtin.recipes": ["*.yaml", "*.yml"],
        "domainmae._builtin.configs": ["**/*.yaml", "**/*.yml"],
        # Any sample file, dotfiles included (Zarr v2 keeps its metadata in .zarray/.zattrs/.zgroup).
        "domainmae._builtin.samples": ["**/*", "**/.*"],
    },
    exclude_package_data={"": ["__pycache__/*", "**/__pycache__/*", "*.pyc"]},
)
