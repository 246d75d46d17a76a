"""Readers (TIFF, Zarr, rasters), the Sample contract, samplers and transforms."""
from .sample import Sample, is_multisensor
from .samplers import Window, grid_windows, random_windows

__all__ = ["Sample", "Window", "grid_windows", "is_multisensor", "random_windows"]

# Microscopy readers (TIFF, Zarr/OME-Zarr), the field dataset, normalisation and augmentation.
from .errors import ErrorPolicy
from .fields import Field, FieldCrops, FieldError, resolve_channels
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
    "Augment", "BandStandardize", "ChannelFilesField", "ErrorPolicy", "Field", "FieldCrops", "FieldError",
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
from .geo import Grid, MissingCRSError, NoValidWindowError, RasterReadError, RasterWindowReader, Region, SceneWindows
from .multisensor import MultiSensorScene, pair_scenes
from .radiometry import Radiometry, baseline_in_name
from .raster import BandSource, RasterScene
from .samplers import tile_aligned_windows
from .scenes import find_scenes, group_band_files, stacked_scenes
from .stats import BandStats, RunningBandStats, band_statistics

__all__ += [
    "BEN19_LABELS", "BandSource", "BandStats", "CLC43_LABELS", "CubeScene", "Grid", "MissingCRSError",
    "MultiSensorScene", "NoValidWindowError", "PatchMetadata", "Radiometry", "RasterReadError", "RasterScene",
    "RasterWindowReader", "Region", "RunningBandStats", "SceneWindows", "band_statistics", "baseline_in_name",
    "bigearthnet_pairs", "bigearthnet_scenes", "cube_grid", "find_scenes", "group_band_files", "open_cube",
    "pair_scenes", "read_patch_metadata", "stacked_scenes", "tile_aligned_windows",
]  # fmt: skip

# Open raster files per process: one LRU shared by every scene (default 128, DOMAINMAE_MAX_OPEN_FILES).
from .handles import max_open_files, set_max_open_files

__all__ += ["max_open_files", "set_max_open_files"]
