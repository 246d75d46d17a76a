"""Readers (TIFF, Zarr, rasters), the Sample contract, samplers, the window engine and transforms."""
from .sample import Sample, is_multisensor
from .samplers import Window, grid_windows, random_windows, span
from .windows import MultiSensorRegion, NoValidWindowError, Region, WindowDataset, WindowReader, valid_fraction

__all__ = [
    "MultiSensorRegion", "NoValidWindowError", "Region", "Sample", "Window", "WindowDataset", "WindowReader",
    "grid_windows", "is_multisensor", "random_windows", "span", "valid_fraction",
]  # fmt: skip

# Microscopy readers (TIFF, Zarr/OME-Zarr), normalisation and augmentation.
from .errors import ErrorPolicy
from .fields import Field, FieldError, resolve_channels
from .tiff import ChannelFilesField, TiffStackField, load_data_fields, pattern_fields, stack_fields
from .transforms import (
    Augment,
    BandStandardize,
    PercentileClip,
    SelfStandardize,
    as_float_tensor,
    percentile_clip,
    self_standardize,
)
from .zarr import ZarrField, zarr_fields

__all__ += [
    "Augment", "BandStandardize", "ChannelFilesField", "ErrorPolicy", "Field", "FieldError",
    "PercentileClip", "SelfStandardize", "TiffStackField", "ZarrField", "as_float_tensor", "load_data_fields",
    "pattern_fields", "percentile_clip", "resolve_channels", "self_standardize", "stack_fields", "zarr_fields",
]  # fmt: skip

# Earth observation: raster scenes (rasterio), S1+S2 pairs, BigEarthNet, xarray/Zarr cubes, band statistics.
from .bigearthnet import (
    BEN19_LABELS,
    CLC43_LABELS,
    PatchMetadata,
    bigearthnet_pairs,
    bigearthnet_scenes,
    read_patch_metadata,
)
from .cube import CubeScene, cube_grid, open_cube
from .geo import Grid, MissingCRSError, RasterReadError
from .multisensor import MultiSensorScene, pair_scenes
from .radiometry import Radiometry, baseline_in_name
from .raster import BandSource, RasterScene
from .safe import read_product_metadata, safe_scenes
from .scenes import find_scenes, group_band_files, stacked_scenes
from .stats import BandStats, RunningBandStats, band_statistics

__all__ += [
    "BEN19_LABELS", "BandSource", "BandStats", "CLC43_LABELS", "CubeScene", "Grid", "MissingCRSError",
    "MultiSensorScene", "PatchMetadata", "Radiometry", "RasterReadError", "RasterScene", "RunningBandStats",
    "band_statistics", "baseline_in_name", "bigearthnet_pairs", "bigearthnet_scenes", "cube_grid", "find_scenes",
    "group_band_files", "open_cube", "pair_scenes", "read_patch_metadata", "read_product_metadata", "safe_scenes",
    "stacked_scenes",
]  # fmt: skip

# Open files per process: one LRU shared by every scene and field (default 128, DOMAINMAE_MAX_OPEN_FILES).
from .handles import max_open_files, set_max_open_files

__all__ += ["max_open_files", "set_max_open_files"]
