"""Reconstruction previews leave the user's plotting backend alone."""
import importlib

import matplotlib

import domainmae.viz


def test_importing_the_previews_keeps_the_plotting_backend(monkeypatch):
    before = matplotlib.get_backend()
    try:
        matplotlib.use("svg")  # e.g. a notebook's inline backend
        importlib.reload(domainmae.viz)
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(before)
