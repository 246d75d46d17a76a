"""Scenes found on disk: one file per band grouped by a regex, or stacked multi-band rasters.

* :func:`find_scenes` - one file per band (Sentinel-2 SAFE/BigEarthNet ``..._B02.tif``, S1 ``..._VV.tif``),
  grouped into scenes by folder or by a ``scene`` group of the regex;
* :func:`stacked_scenes` - one multi-band GeoTIFF/COG per scene (Landsat, PlanetScope, a drone
  orthomosaic), bands named by the file's band descriptions or by the caller.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import ErrorPolicy, OnError, as_policy
from .geo import RasterReadError
from .raster import BandSource, RasterScene, datetime_from_name
from .remote import Location, as_location, is_url, pure_path, read_list
from .tiff import TIFF_SUFFIXES

#: Regex grouping one-file-per-band layouts (Sentinel-2 SAFE/BigEarthNet, Sentinel-1 VV/VH).
BAND_FILE_PATTERN = r"(?P<band>B\d\dA?|B8A|SCL|VV|VH)\.tiff?$"


def _natural_key(name: str) -> tuple[Any, ...]:
    # Sorts Sentinel-2 bands the way ESA lists them: B01 ... B08, B8A, B09, B11, B12.
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


def group_band_files(
    root: str | Path,
    pattern: str = BAND_FILE_PATTERN,
    *,
    bands: Sequence[str] | None = None,
    on_error: OnError | ErrorPolicy = "raise",
) -> dict[str, list[BandSource]]:
    """Files stored one per band under ``root``, grouped into scenes by a regex.

    ``pattern`` is searched in each file's path relative to ``root`` and must have a ``band``
    group; files are grouped by its ``scene`` group if it has one, else by folder (the keys of
    the result). A band in two files of a scene raises, unless the pattern has a ``res`` group
    (a number, e.g. the metres of a SAFE's ``R20m`` folder): then the finest copy is taken.
    ``bands`` selects and orders bands (default: every band found, in natural order
    B01..B08, B8A, B09..). A scene lacking one of ``bands`` raises, or with ``on_error="skip"``
    is left out (see :mod:`~domainmae.data.errors`).
    """
    policy = as_policy(on_error)
    since = len(policy.skipped)
    regex, root = re.compile(pattern), Path(root)
    if "band" not in regex.groupindex:
        raise ValueError(f"pattern {pattern!r} needs a named group (?P<band>...)")
    by_res = "res" in regex.groupindex
    groups: dict[str, dict[str, tuple[float, Path]]] = {}  # scene -> band -> (resolution, file)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        match = regex.search(path.relative_to(root).as_posix())
        if match is None:
            continue
        key = match["scene"] if "scene" in regex.groupindex else path.parent.relative_to(root).as_posix()
        files, band = groups.setdefault(key, {}), match["band"]
        res = float(match["res"]) if by_res else 0.0  # without a res group every copy ties, so a second one raises
        if band in files and files[band][0] == res:
            raise ValueError(f"band {band} of scene {key} is in two files: {files[band][1]} and {path}")
        if band not in files or res < files[band][0]:
            files[band] = (res, path)
    if not groups:
        raise FileNotFoundError(f"no file under {root} matches {pattern!r}")
    scenes = {}
    for key, files in groups.items():
        names = list(bands) if bands is not None else sorted(files, key=_natural_key)
        missing = [name for name in names if name not in files]
        if missing:
            policy.handle(FileNotFoundError(f"scene {key} under {root} has no file for band(s) {missing} "
                                            f"(found {sorted(files)})"))  # fmt: skip
            continue
        scenes[key] = [BandSource(name, files[name][1]) for name in names]
    policy.summarise(since, len(groups), f"scenes under {root}")
    return scenes


def find_scenes(
    root: str | Path,
    pattern: str = BAND_FILE_PATTERN,
    *,
    bands: Sequence[str] | None = None,
    on_error: OnError | ErrorPolicy = "raise",
    **scene_kwargs: Any,
) -> list[RasterScene]:
    """:class:`RasterScene` per group of :func:`group_band_files`; ``scene_kwargs`` go to each.

    Scene ids are the last part of the group key (the folder name), or the whole key with ``_`` for ``/``
    where that name is shared (``2020/T33UUP``, ``2021/T33UUP``); acquisition times come from the ids.
    """
    scenes = []
    groups = group_band_files(root, pattern, bands=bands, on_error=on_error)
    names = [Path(key).name or key for key in groups]
    for (key, band_sources), name in zip(groups.items(), names):
        scene_id = key.replace("/", "_") if names.count(name) > 1 else name
        kwargs = {"scene_id": scene_id, "datetime": datetime_from_name(scene_id), **scene_kwargs}
        scenes.append(RasterScene(band_sources, **kwargs))
    return scenes


def _rasters(root: str | Path) -> list[Location]:
    """The rasters ``root`` stands for (see :func:`stacked_scenes`)."""
    root = as_location(root)
    if pure_path(root).suffix.lower() == ".txt":
        return read_list(root)
    if is_url(root):
        return [root]
    return [root] if root.is_file() else sorted(p for p in root.iterdir() if p.suffix.lower() in TIFF_SUFFIXES)


def stacked_scenes(
    root: str | Path,
    *,
    bands: Sequence[str] | None = None,
    on_error: OnError | ErrorPolicy = "raise",
    **scene_kwargs: Any,
) -> list[RasterScene]:
    """One :class:`RasterScene` per multi-band raster: ``root`` itself (a file or a URL), each ``.tif``/``.tiff``
    in the folder ``root``, or each file or URL that the ``.txt`` list ``root`` names (:func:`~.remote.read_list`).

    Bands are named as :meth:`RasterScene.from_file` says (descriptions, else ``bands`` in order);
    ``scene_kwargs`` go to each scene. A raster that cannot be opened or lacks one of ``bands``
    raises, or with ``on_error="skip"`` is left out (see :mod:`~domainmae.data.errors`).
    """
    policy = as_policy(on_error)
    since = len(policy.skipped)
    paths = _rasters(root)
    if not paths:
        raise FileNotFoundError(f"no GeoTIFF ({', '.join(sorted(TIFF_SUFFIXES))}) in {root}")
    scenes = []
    for path in paths:
        try:
            scenes.append(RasterScene.from_file(path, bands, **scene_kwargs))
        except (RasterReadError, ValueError) as err:
            policy.handle(err)
    policy.summarise(since, len(paths), f"rasters in {root}")
    return scenes
