"""Readers (TIFF, Zarr, rasters), the Sample contract, samplers and transforms."""
from .sample import Sample, is_multisensor
from .samplers import Window, grid_windows, random_windows

__all__ = ["Sample", "Window", "grid_windows", "is_multisensor", "random_windows"]
