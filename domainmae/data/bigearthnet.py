"""BigEarthNet(-MM) patches: label metadata, CORINE nomenclatures, and S1+S2 scenes.

Each patch folder holds one GeoTIFF per band and ``<folder>_labels_metadata.json`` with the
CORINE Land Cover labels, the footprint, the source product and the acquisition time. S2 patches
are L2A reflectance x 10000; the processing baseline in the source product name decides the
offset (:meth:`~domainmae.data.radiometry.Radiometry.for_baseline`). S1 patches are VV/VH in dB.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import numpy as np

from .errors import ErrorPolicy, OnError, as_policy
from .multisensor import PATCH_KEY_PATTERN, MultiSensorScene, pair_scenes
from .radiometry import SENTINEL1_DB, SENTINEL2_L2A, Radiometry, baseline_in_name
from .raster import RasterScene
from .scenes import BAND_FILE_PATTERN, group_band_files

SENTINEL2_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")
SENTINEL1_BANDS = ("VV", "VH")

#: The 43 CORINE Land Cover level-3 classes of BigEarthNet in its original label order, each
#: mapped to its class in the 19-class nomenclature (Sumbul et al. 2021; None: dropped there).
CLC43_TO_BEN19: dict[str, str | None] = {
    "Continuous urban fabric": "Urban fabric",
    "Discontinuous urban fabric": "Urban fabric",
    "Industrial or commercial units": "Industrial or commercial units",
    "Road and rail networks and associated land": None,
    "Port areas": None,
    "Airports": None,
    "Mineral extraction sites": None,
    "Dump sites": None,
    "Construction sites": None,
    "Green urban areas": None,
    "Sport and leisure facilities": None,
    "Non-irrigated arable land": "Arable land",
    "Permanently irrigated land": "Arable land",
    "Rice fields": "Arable land",
    "Vineyards": "Permanent crops",
    "Fruit trees and berry plantations": "Permanent crops",
    "Olive groves": "Permanent crops",
    "Pastures": "Pastures",
    "Annual crops associated with permanent crops": "Permanent crops",
    "Complex cultivation patterns": "Complex cultivation patterns",
    "Land principally occupied by agriculture, with significant areas of natural vegetation": (
        "Land principally occupied by agriculture, with significant areas of natural vegetation"
    ),
    "Agro-forestry areas": "Agro-forestry areas",
    "Broad-leaved forest": "Broad-leaved forest",
    "Coniferous forest": "Coniferous forest",
    "Mixed forest": "Mixed forest",
    "Natural grassland": "Natural grassland and sparsely vegetated areas",
    "Moors and heathland": "Moors, heathland and sclerophyllous vegetation",
    "Sclerophyllous vegetation": "Moors, heathland and sclerophyllous vegetation",
    "Transitional woodland/shrub": "Transitional woodland, shrub",
    "Beaches, dunes, sands": "Beaches, dunes, sands",
    "Bare rock": None,
    "Sparsely vegetated areas": "Natural grassland and sparsely vegetated areas",
    "Burnt areas": None,
    "Inland marshes": "Inland wetlands",
    "Peatbogs": "Inland wetlands",
    "Salt marshes": "Coastal wetlands",
    "Salines": "Coastal wetlands",
    "Intertidal flats": None,
    "Water courses": "Inland waters",
    "Water bodies": "Inland waters",
    "Coastal lagoons": "Marine waters",
    "Estuaries": "Marine waters",
    "Sea and ocean": "Marine waters",
}
CLC43_LABELS = tuple(CLC43_TO_BEN19)
BEN19_LABELS = tuple(dict.fromkeys(name for name in CLC43_TO_BEN19.values() if name is not None))


@dataclass(frozen=True)
class PatchMetadata:
    """One ``*_labels_metadata.json``: CORINE labels, footprint and acquisition.

    ``bounds`` are ``(left, bottom, right, top)`` in ``crs_wkt``; ``source`` is the S2 tile or S1
    scene product the patch was cut from; ``s2_partner`` names the paired S2 patch (S1 only).
    """

    path: Path
    labels: tuple[str, ...]
    bounds: tuple[float, float, float, float]
    crs_wkt: str
    acquired: datetime
    source: str
    s2_partner: str | None

    def multi_hot(self, nomenclature: Literal[43, 19] = 43) -> np.ndarray:
        """Labels as a float32 multi-hot vector over the 43 or the 19 classes, in the original order."""
        if nomenclature == 43:
            names, vocabulary = set(self.labels), CLC43_LABELS
        elif nomenclature == 19:
            names, vocabulary = {CLC43_TO_BEN19[label] for label in self.labels}, BEN19_LABELS
        else:
            raise ValueError(f"nomenclature must be 43 or 19, got {nomenclature!r}")
        return np.array([name in names for name in vocabulary], dtype=np.float32)


def read_patch_metadata(path: str | Path) -> PatchMetadata:
    """Parse a BigEarthNet ``*_labels_metadata.json`` (S1 or S2); errors name the file and key."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
        coords = record["coordinates"]
        unknown = [label for label in record["labels"] if label not in CLC43_TO_BEN19]
        if unknown:
            raise ValueError(f"unknown CORINE labels {unknown}")
        # S2 files say "acquisition_date" ("2017-06-13 10:10:31"), S1 files "acquisition_time" (ISO);
        # S1 files also misname the lower-right y "lly". Both are times in UTC.
        acquired = datetime.fromisoformat(record.get("acquisition_date") or record["acquisition_time"])
        lower = coords["lry"] if "lry" in coords else coords["lly"]
        return PatchMetadata(
            path=path,
            labels=tuple(record["labels"]),
            bounds=(float(coords["ulx"]), float(lower), float(coords["lrx"]), float(coords["uly"])),
            crs_wkt=record["projection"],
            acquired=acquired.replace(tzinfo=timezone.utc),
            source=record.get("tile_source") or record["scene_source"],
            s2_partner=record.get("corresponding_s2_patch"),
        )
    except KeyError as err:
        raise ValueError(f"BigEarthNet metadata {path} lacks the key {err}") from err
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot parse BigEarthNet metadata {path}: {err}") from err


def bigearthnet_scenes(
    root: str | Path,
    sensor: Literal["s2", "s1"],
    *,
    bands: Sequence[str] | None = None,
    radiometry: Radiometry | None = None,
    on_error: OnError | ErrorPolicy = "raise",
) -> list[RasterScene]:
    """Every patch folder under ``root`` as a scene; labels go into each sample's ``meta``.

    ``radiometry`` is the sensor's (default: :data:`~domainmae.data.radiometry.SENTINEL2_L2A`, or
    for S1 values taken as dB); the processing baseline of each patch's source product picks its
    offset (``Radiometry(to_db=True)`` for S1 in linear power). A patch lacking a band or readable
    metadata raises, or with ``on_error="skip"`` is left out (see :mod:`~domainmae.data.errors`).
    """
    radiometry = radiometry or (SENTINEL2_L2A if sensor == "s2" else SENTINEL1_DB)
    bands = bands or (SENTINEL2_BANDS if sensor == "s2" else SENTINEL1_BANDS)
    policy = as_policy(on_error)
    patches = group_band_files(root, BAND_FILE_PATTERN, bands=bands, on_error=policy)
    since = len(policy.skipped)  # after group_band_files, which reports its own skips
    scenes = []
    for key, band_sources in patches.items():
        folder = Path(root) / key
        try:
            patch = read_patch_metadata(folder / f"{folder.name}_labels_metadata.json")
        except ValueError as err:
            policy.handle(err)
            continue
        scene_radiometry = radiometry.for_baseline(baseline_in_name(patch.source))
        meta = {"labels": patch.labels, "source_product": patch.source}
        if patch.s2_partner:  # S1: the S2 patch it pairs with (bigearthnet_pairs)
            meta["s2_partner"] = patch.s2_partner
        scene = RasterScene(
            band_sources, scene_id=folder.name, radiometry=scene_radiometry, datetime=patch.acquired, meta=meta
        )
        scenes.append(scene)
    policy.summarise(since, len(patches), f"BigEarthNet patches under {root}")
    return scenes


def bigearthnet_pairs(
    s2_root: str | Path,
    s1_root: str | Path,
    *,
    bands: Mapping[str, Sequence[str]] | None = None,
    radiometry: Mapping[str, Radiometry] | None = None,
    on_error: OnError | ErrorPolicy = "raise",
) -> list[MultiSensorScene]:
    """S2 + S1 patches paired as each S1 patch's metadata says (``corresponding_s2_patch``), or, where a patch's
    metadata does not, by the trailing ``_<row>_<col>`` of their folder names (which repeats across tiles in
    the full archive, so it pairs the example sets only).

    ``bands`` selects and orders each sensor's bands and ``radiometry`` sets each sensor's
    (``{"s2": ..., "s1": ...}``; default: all bands, the sensors' standard radiometry). Patches that
    cannot be read or paired raise, or with ``on_error="skip"`` are left out; every skip of the three
    scans lands on one policy.
    """
    bands, radiometry, policy = bands or {}, radiometry or {}, as_policy(on_error)
    s2 = bigearthnet_scenes(s2_root, "s2", bands=bands.get("s2"), radiometry=radiometry.get("s2"), on_error=policy)
    s1 = bigearthnet_scenes(s1_root, "s1", bands=bands.get("s1"), radiometry=radiometry.get("s1"), on_error=policy)
    named = all("s2_partner" in scene.meta for scene in s1)
    key = (lambda scene: scene.meta.get("s2_partner", scene.scene_id)) if named else PATCH_KEY_PATTERN
    return pair_scenes(s2, s1, key=key, on_unpaired=policy)
