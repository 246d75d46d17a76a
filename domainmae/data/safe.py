"""Sentinel-2 L2A products as ESA ships them: unpacked ``.SAFE`` folders, one scene per product.

A product (a folder named ``*.SAFE``, or holding ``MTD_MSIL2A.xml``) stores each band several times, as
JPEG 2000 files ``GRANULE/<granule>/IMG_DATA/R10m|R20m|R60m/<tile>_<time>_<band>_<res>m.jp2``: the 10 m
bands at 10 m, most bands again at 20 m, nearly all at 60 m. The coarser copies are ESA's downsampling of
the finer ones, so a scene reads each band from its finest copy (B02 from R10m, B05 and SCL from R20m, B09
from R60m) and :class:`~domainmae.data.raster.RasterScene` puts them on the 10 m grid as it reads.

``MTD_MSIL2A.xml`` at the product root states the processing baseline, the quantification value and, from
baseline 04.00, each band's offset; these refine the sensor's radiometry
(:meth:`~domainmae.data.radiometry.Radiometry.for_product`). A product without it falls back to the
baseline in its name (``..._N0509_...``).
"""
from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

from .bigearthnet import SENTINEL2_BANDS
from .errors import ErrorPolicy, OnError, as_policy
from .radiometry import SENTINEL2_L2A, Radiometry, baseline_in_name, parse_baseline
from .raster import RasterScene, datetime_from_name
from .scenes import group_band_files

MTD_NAME = "MTD_MSIL2A.xml"
#: A band file of a product (path relative to the folder searched), grouped by granule; ``res`` picks the
#: finest copy. AOT and WVP (not reflectance) and TCI (an 8-bit RGB preview) are left out.
SAFE_BAND_PATTERN = (
    r"^(?P<scene>(?:.+/)?GRANULE/[^/]+)/IMG_DATA/R(?P<res>\d+)m/[^/]+_(?P<band>B\d\d|B8A|SCL)_\d+m\.jp2$"
)
#: The ``band_id`` of the MTD's ``BOA_ADD_OFFSET``: all 13 MSI bands in ESA order, B10 (no L2A image) included.
MTD_BAND_IDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")


@dataclass(frozen=True)
class ProductMetadata:
    """What a product's ``MTD_MSIL2A.xml`` says about its radiometry (None or empty: it says nothing)."""

    baseline: tuple[int, int] | None = None
    quantification: float | None = None  # BOA_QUANTIFICATION_VALUE: DN per unit of reflectance
    offsets: Mapping[str, float] = field(default_factory=dict)  # band name -> BOA_ADD_OFFSET (DN)


def _number(text: str | None, what: str) -> float:
    try:
        return float(text or "")  # an empty or missing value is no number either
    except ValueError:
        raise ValueError(f"{what} is {text!r}, not a number") from None


def read_product_metadata(path: str | Path) -> ProductMetadata:
    """Processing baseline, BOA quantification and offsets from an ``MTD_MSIL2A.xml``.

    Elements are found by name in any namespace (ESA's changes with the product format version). A
    malformed file - not XML, or a value that is no baseline, number or band - is a ValueError naming it.
    """
    path = Path(path)
    try:
        root = ElementTree.parse(path).getroot()
    except ElementTree.ParseError as err:
        raise ValueError(f"{path} is not valid XML: {err}") from err
    try:
        baseline = root.findtext(".//{*}PROCESSING_BASELINE")
        text = root.findtext(".//{*}BOA_QUANTIFICATION_VALUE")
        quantification = None if text is None else _number(text, "BOA_QUANTIFICATION_VALUE")
        if quantification is not None and not 0 < quantification < math.inf:  # its inverse becomes the scale
            raise ValueError(f"BOA_QUANTIFICATION_VALUE {text!r} is not a positive number")
        offsets = {}
        for element in root.iterfind(".//{*}BOA_ADD_OFFSET"):
            band_id, what = element.get("band_id", ""), f"BOA_ADD_OFFSET band_id={element.get('band_id')!r}"
            if not band_id.isdigit() or int(band_id) >= len(MTD_BAND_IDS):
                raise ValueError(f"{what} is not one of 0..{len(MTD_BAND_IDS) - 1} ({', '.join(MTD_BAND_IDS)})")
            offsets[MTD_BAND_IDS[int(band_id)]] = _number(element.text, what)
        return ProductMetadata(parse_baseline(baseline) if baseline else None, quantification, offsets)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err


def is_safe_product(folder: Path) -> bool:
    """A Sentinel-2 L2A product folder: named ``*.SAFE``, or holding ``MTD_MSIL2A.xml``."""
    return folder.is_dir() and (folder.suffix == ".SAFE" or (folder / MTD_NAME).is_file())


def holds_safe_products(root: str | Path) -> bool:
    """True when ``root`` is a product or has one anywhere below it."""
    root = Path(root)
    return is_safe_product(root) or any(
        is_safe_product(Path(folder, name)) for folder, subdirs, _ in os.walk(root) for name in subdirs
    )


def safe_scenes(
    root: str | Path,
    *,
    bands: Sequence[str] | None = None,
    radiometry: Radiometry = SENTINEL2_L2A,
    on_error: OnError | ErrorPolicy = "raise",
    **scene_kwargs: Any,
) -> list[RasterScene]:
    """One :class:`RasterScene` per product at ``root`` (a product, or a folder of products at any depth).

    Scene ids are the product names without ``.SAFE`` (a product of several granules, as some made before
    2017, is a scene per granule, ``<product>_<granule>``); acquisition times come from the names.
    ``bands`` selects and orders bands (default: the 12 L2A reflectance bands in ESA order; ``SCL`` when
    asked for, e.g. as a mask band with ``invalid_classes``); ``scene_kwargs`` go to each scene.
    ``radiometry`` (the sensor's) is refined by each product's metadata: the baseline in its MTD or else
    its name, then the quantification and per-band offsets its MTD states. A product lacking a band or
    with a malformed MTD raises, or with ``on_error="skip"`` is left out (see :mod:`~domainmae.data.errors`).
    """
    policy = as_policy(on_error)
    granules = group_band_files(root, SAFE_BAND_PATTERN, bands=SENTINEL2_BANDS if bands is None else bands,
                                on_error=policy)  # fmt: skip
    since = len(policy.skipped)  # after group_band_files, which reports its own skips
    product_of = {key: (Path(root) / key).parents[1] for key in granules}  # <product>/GRANULE/<granule>
    granule_count = Counter(product_of.values())
    scenes = []
    for key, band_sources in granules.items():
        product = product_of[key]
        mtd = product / MTD_NAME
        try:
            metadata = read_product_metadata(mtd) if mtd.is_file() else ProductMetadata()
        except ValueError as err:
            policy.handle(err)
            continue
        baseline = metadata.baseline or baseline_in_name(product.name)
        scene_radiometry = radiometry.for_product(baseline, quantification=metadata.quantification)
        # The MTD states offsets band by band, so each goes on its own band.
        sources = [
            replace(s, radiometry=scene_radiometry.for_product(None, metadata.offsets[s.name]))
            if s.name in metadata.offsets else s
            for s in band_sources
        ]  # fmt: skip
        name = product.name.removesuffix(".SAFE")
        scene_id = name if granule_count[product] == 1 else f"{name}_{Path(key).name}"
        kwargs = {"scene_id": scene_id, "datetime": datetime_from_name(name), **scene_kwargs}
        scenes.append(RasterScene(sources, radiometry=scene_radiometry, **kwargs))
    policy.summarise(since, len(granules), f"SAFE product granules under {root}")
    return scenes
