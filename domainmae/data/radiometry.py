"""Radiometry: raw raster values (DN, linear power) to physical units (reflectance, dB)."""
from __future__ import annotations

import re
from dataclasses import dataclass, replace

import numpy as np
from rasterio.io import DatasetReader

_DB_UNITS = {"db", "decibel", "decibels"}


@dataclass(frozen=True)
class Radiometry:
    """Raw values to physical ones: ``(DN + offset) * scale``, then ``10*log10`` when ``to_db``.

    Offsets are in DN, as ESA writes them: Sentinel-2 L2A from processing baseline 04.00 has
    ``BOA_ADD_OFFSET = -1000`` and quantification 10000, i.e. ``scale=1e-4, offset=-1000``;
    earlier baselines have no offset. Sentinel-1 GRD in linear power needs ``to_db=True``;
    powers at or below ``10**(db_floor/10)`` (zeros at swath edges) become ``db_floor``, not -inf.
    """

    scale: float = 1.0
    offset: float = 0.0
    to_db: bool = False
    db_floor: float = -50.0

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

    def for_band(self, dataset: DatasetReader, index: int) -> Radiometry:
        """This radiometry overridden by what the file says about band ``index`` (1-based).

        GDAL band scale/offset (``value = DN * scale + offset``) win over the configured ones;
        a unit of dB means the values are already in decibels.
        """
        radiometry = self
        scale, offset = dataset.scales[index - 1], dataset.offsets[index - 1]
        if (scale, offset) != (1.0, 0.0):
            radiometry = replace(radiometry, scale=scale, offset=offset / scale)
        if (dataset.units[index - 1] or "").strip().lower() in _DB_UNITS:
            radiometry = replace(radiometry, to_db=False)
        return radiometry


def sentinel2_radiometry(product_id: str) -> Radiometry | None:
    """L2A reflectance scaling from the processing baseline in a product name (``..._N0400_...``).

    ``None`` when the name carries no baseline, so the caller falls back to its configuration.
    """
    match = re.search(r"_N(\d{2})(\d{2})_", product_id)
    if match is None:
        return None
    baseline = (int(match[1]), int(match[2]))
    return Radiometry(scale=1e-4, offset=-1000.0 if baseline >= (4, 0) else 0.0)
