"""Stack the bundled BigEarthNet S2 10 m bands into one multi-band GeoTIFF per patch.

Writes ``datasets/samples/multispectral/<patch>.tif`` for three patches: bands blue, green, red, nir (S2 B02, B03, B04,
B08, named by the band descriptions), uint16 L2A reflectance x 10000 as in the source, nodata 0,
DEFLATE-compressed. The ``multispectral`` recipe's demo trains on them: a stacked raster like a
Landsat, PlanetScope or drone product, read with no per-band files and no Sentinel-2 names.

    python datasets/make_multispectral_sample.py
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio

SAMPLES = Path(__file__).resolve().parent / "samples"
BANDS = {"blue": "B02", "green": "B03", "red": "B04", "nir": "B08"}
#: Three patches in one UTM zone (EPSG:32629), so the demo's embeddings share one CRS; ~250 KB in all.
PATCHES = ("S2A_MSIL2A_20170617T113321_36_85", "S2A_MSIL2A_20170617T113321_4_55", "S2A_MSIL2A_20171221T112501_56_35")


def main() -> None:
    out_dir = SAMPLES / "multispectral"
    out_dir.mkdir(exist_ok=True)
    for patch in (SAMPLES / "bigearthnet-mm" / "BigEarthNet-S2-Example" / name for name in PATCHES):
        layers = []
        for band in BANDS.values():
            with rasterio.open(patch / f"{patch.name}_{band}.tif") as src:
                layers.append(src.read(1))
                profile = src.profile
        profile.update(count=len(BANDS), nodata=0, compress="deflate", predictor=2)
        with rasterio.open(out_dir / f"{patch.name}.tif", "w", **profile) as dst:
            dst.write(np.stack(layers))
            dst.descriptions = tuple(BANDS)


if __name__ == "__main__":
    main()
