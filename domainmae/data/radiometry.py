"""Radiometry: raw raster values (DN, linear power) to physical units (reflectance, dB), per sensor.

A sensor's :class:`Radiometry` comes from its config (``configs/sensors/*.yaml``, section
``data.radiometry.<sensor>``, settable from a recipe) and every EO reader applies it band by band
(:meth:`Radiometry.for_band`), refined by what each file says about itself.

How a Sentinel-2 file tells its processing baseline (from 04.00, L2A DN carry ``BOA_ADD_OFFSET=-1000``):

* a ``BOA_ADD_OFFSET`` tag (GDAL metadata item) on the band or the file: the offset itself, in DN;
* a ``PROCESSING_BASELINE`` tag on the file (``"04.00"``, as GDAL's SENTINEL2 driver reports it);
* the product name anywhere in the file's path (``S2B_MSIL2A_20230101T101031_N0400_...``), as in a
  ``.SAFE`` folder or a file named after its product;
* BigEarthNet patches: the source product in their label metadata;
* a ``.SAFE`` product's ``MTD_MSIL2A.xml`` (:mod:`~domainmae.data.safe`): its baseline, and offsets per band and
  a quantification value stated outright (:meth:`Radiometry.for_product`).

A file's own GDAL band scale/offset win over all of these.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from rasterio.io import DatasetReader

_DB_UNITS = {"db", "decibel", "decibels"}
_BASELINE_IN_NAME = re.compile(r"_N(\d{2})(\d{2})(?:_|\.|$)")
_BASELINE = re.compile(r"^\s*(\d{1,2})\.(\d{1,2})\s*$")
BASELINE_TAG, OFFSET_TAG = "PROCESSING_BASELINE", "BOA_ADD_OFFSET"


def parse_baseline(text: str) -> tuple[int, int]:
    """``"04.00"`` -> ``(4, 0)``; anything else is a ValueError naming the text."""
    match = _BASELINE.match(text)
    if match is None:
        raise ValueError(f"processing baseline {text!r} is not of the form NN.NN (e.g. '04.00')")
    return int(match[1]), int(match[2])


def baseline_in_name(name: str) -> tuple[int, int] | None:
    """The processing baseline in a Sentinel-2 product name or path (``..._N0400_...``), if any."""
    match = _BASELINE_IN_NAME.search(name)
    return None if match is None else (int(match[1]), int(match[2]))


@dataclass(frozen=True)
class Radiometry:
    """Raw values to physical ones: ``(DN + offset) * scale``, then ``10*log10`` when ``to_db``.

    Offsets are in DN, as ESA writes them: Sentinel-2 L2A from processing baseline 04.00 has
    ``BOA_ADD_OFFSET = -1000`` and quantification 10000, i.e. ``scale=1e-4, offset=-1000``.
    ``baseline_offsets`` (``(("04.00", -1000.0),)``) gives the offset from a processing baseline on;
    a scene of a known baseline takes the latest one not after its own (0 before them all), a scene
    of unknown baseline keeps ``offset``. ``nodata`` is the raw value of missing pixels where a file
    declares none. Sentinel-1 GRD in linear power needs ``to_db=True``; powers at or below
    ``10**(db_floor/10)`` (zeros at swath edges) become ``db_floor``, not -inf.
    """

    scale: float = 1.0
    offset: float = 0.0
    to_db: bool = False
    db_floor: float = -50.0
    nodata: float | None = None
    baseline_offsets: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        for baseline, _ in self.baseline_offsets:
            parse_baseline(baseline)  # fail at configuration, not at the first read

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Radiometry:
        """From a sensor config: ``{scale, offset, nodata, to_db, db_floor, baseline_offsets: {"NN.NN": DN}}``."""
        options = dict(config)
        offsets = options.pop("baseline_offsets", None) or {}
        return cls(**options, baseline_offsets=tuple((str(k), float(v)) for k, v in offsets.items()))

    def apply(self, values: np.ndarray) -> np.ndarray:
        """``[..., H, W]`` raw values -> float32 physical values of the same shape."""
        out = values.astype(np.float32)
        if self.offset:
            out += np.float32(self.offset)
        if self.scale != 1.0:
            out *= np.float32(self.scale)
        if self.to_db:
            out = np.float32(10.0) * np.log10(np.maximum(out, np.float32(10.0 ** (self.db_floor / 10.0))))
        return out

    def for_baseline(self, baseline: tuple[int, int] | None) -> Radiometry:
        """The offset for a scene of processing ``baseline`` (``None``: unknown, keep ``offset``)."""
        if baseline is None or not self.baseline_offsets:
            return self
        applies = [(parse_baseline(start), value) for start, value in self.baseline_offsets]
        applies = [(start, value) for start, value in applies if start <= baseline]
        return replace(self, offset=max(applies)[1] if applies else 0.0, baseline_offsets=())

    def for_product(
        self, baseline: tuple[int, int] | None, offset: float | None = None, quantification: float | None = None
    ) -> Radiometry:
        """What a product says about itself: its processing ``baseline`` picks the table's offset
        (:meth:`for_baseline`); an ``offset`` (DN) stated outright wins over the table, and a stated
        ``quantification`` value (DN per unit, 10000 for L2A reflectance) sets ``scale`` to its inverse.
        """
        radiometry = self.for_baseline(baseline)
        if offset is not None:
            # Drop the table too: a baseline seen later (in a file's path, by for_band) must not undo a stated offset.
            radiometry = replace(radiometry, offset=offset, baseline_offsets=())
        if quantification is not None:
            radiometry = replace(radiometry, scale=1.0 / quantification)
        return radiometry

    def for_band(self, dataset: DatasetReader, index: int) -> Radiometry:
        """This radiometry refined by what the file says about band ``index`` (1-based).

        In rising precedence: the baseline in the file's ``PROCESSING_BASELINE`` tag or path, a
        ``BOA_ADD_OFFSET`` tag on the band or file, the GDAL band scale/offset (``value = DN *
        scale + offset``); a unit of dB means the values are already in decibels.
        """
        tags, band_tags = dataset.tags(), dataset.tags(index)
        baseline = tags.get(BASELINE_TAG)
        offset = band_tags.get(OFFSET_TAG, tags.get(OFFSET_TAG))
        radiometry = self.for_product(
            parse_baseline(baseline) if baseline else baseline_in_name(dataset.name),
            None if offset is None else float(offset),
        )
        scale, gdal_offset = dataset.scales[index - 1], dataset.offsets[index - 1]
        if (scale, gdal_offset) != (1.0, 0.0):
            radiometry = replace(radiometry, scale=scale, offset=gdal_offset / scale)
        if (dataset.units[index - 1] or "").strip().lower() in _DB_UNITS:
            radiometry = replace(radiometry, to_db=False)
        return radiometry


#: Sentinel-2 L2A and Sentinel-1 (BigEarthNet: already in dB) as ``configs/sensors/`` describes them, for
#: readers used from Python without a recipe.
SENTINEL2_L2A = Radiometry(scale=1e-4, nodata=0, baseline_offsets=(("04.00", -1000.0),))
SENTINEL1_DB = Radiometry()
