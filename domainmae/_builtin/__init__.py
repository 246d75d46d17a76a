"""Built-in data installed with the package: ``recipes``, ``configs`` and ``samples`` (the demo data).

These subpackages are the top-level folders ``recipes/``, ``configs/`` and ``datasets/samples/`` mapped in by
setup.py; read them with ``importlib.resources.files("domainmae._builtin.recipes")`` and friends, which works
in a wheel install and in an editable one alike.
"""
