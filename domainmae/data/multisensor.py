"""Co-registered multi-sensor scenes (Sentinel-1 + Sentinel-2) and how to pair them.

A :class:`MultiSensorScene` reads every sensor on the grid of a reference sensor (S2 by default:
it has the finest grid). Sensors already on that grid are plain windowed reads; the others are
warped on the fly (:class:`rasterio.vrt.WarpedVRT`, see :mod:`domainmae.data.raster`).
:func:`pair_scenes` matches scenes of two sensors by a key in their names (BigEarthNet: the
trailing ``_<row>_<col>`` of the patch folders) or by footprint overlap.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

from rasterio.warp import transform_bounds

from .errors import ErrorPolicy, OnError, as_policy
from .geo import Grid, GridSource, MissingCRSError, covered_share
from .raster import RasterScene
from .samplers import Window
from .windows import MultiSensorRegion

#: BigEarthNet patch folders end in ``_<row>_<col>`` of the patch inside its Sentinel-2 tile.
PATCH_KEY_PATTERN = r"_(\d+_\d+)$"


class MultiSensorScene(GridSource):
    """Scenes of several sensors over one place, read on the grid of ``reference``.

    ``read(region)`` returns a region whose crops are ``{sensor: Sample, "meta": {...}}``; the
    shared meta holds the grid window's CRS, transform and bounds and every sensor's scene id.
    """

    def __init__(self, scenes: Mapping[str, RasterScene], reference: str = "s2") -> None:
        if reference not in scenes:
            raise ValueError(f"reference sensor {reference!r} is not among {sorted(scenes)}")
        if "meta" in scenes:
            raise ValueError("'meta' is reserved for the shared metadata of a multi-sensor sample")
        self.scenes, self.reference = dict(scenes), reference

    @property
    def name(self) -> str:
        return "+".join(scene.scene_id for scene in self.scenes.values())

    @property
    def grid(self) -> Grid:
        return self.scenes[self.reference].grid

    @property
    def block_shape(self) -> tuple[int, int]:
        return self.scenes[self.reference].block_shape

    def read(self, region: Window) -> MultiSensorRegion:
        grid = self.grid
        regions = {sensor: scene.read(region, grid) for sensor, scene in self.scenes.items()}
        return MultiSensorRegion(regions, {"scene_ids": {s: scene.scene_id for s, scene in self.scenes.items()}})

    def close(self) -> None:
        for scene in self.scenes.values():
            scene.close()


def _footprint(scene: RasterScene) -> tuple[Grid, tuple[float, float, float, float]]:
    grid = scene.grid
    if grid.crs is None:
        raise MissingCRSError(f"scene {scene.scene_id} ({scene.files[0]}) has no CRS; pairing by footprint needs one")
    return grid, grid.window_meta(Window(0, 0, grid.height, grid.width))["bounds"]


def _overlap(scene: RasterScene, other: RasterScene) -> float:
    """Share of ``scene``'s footprint covered by ``other``'s bounding box (in ``scene``'s CRS)."""
    grid, bounds = _footprint(scene)
    other_grid, other_bounds = _footprint(other)
    return covered_share(bounds, transform_bounds(other_grid.crs, grid.crs, *other_bounds))


def _by_key(
    scenes: Sequence[RasterScene], key: re.Pattern[str] | Callable[[RasterScene], str]
) -> dict[str, RasterScene]:
    out: dict[str, RasterScene] = {}
    for scene in scenes:
        if callable(key):
            value = key(scene)
        else:
            match = key.search(scene.scene_id)
            if match is None:
                raise ValueError(f"scene id {scene.scene_id!r} does not match the pairing key {key.pattern!r}")
            value = match["key"] if "key" in key.groupindex else match[1]
        if value in out:
            raise ValueError(
                f"scenes {out[value].scene_id} and {scene.scene_id} share the pairing key {value!r}; "
                "use a more specific key or by='footprint'"
            )
        out[value] = scene
    return out


def pair_scenes(
    reference: Sequence[RasterScene],
    other: Sequence[RasterScene],
    *,
    sensors: tuple[str, str] = ("s2", "s1"),
    by: Literal["name", "footprint"] = "name",
    key: str | Callable[[RasterScene], str] = PATCH_KEY_PATTERN,
    min_overlap: float = 0.5,
    on_unpaired: OnError | ErrorPolicy = "raise",
) -> list[MultiSensorScene]:
    """Pair each ``reference`` scene (read on its own grid) with one scene of ``other``.

    ``by="name"``: the first group (or the ``key`` group) of the regex ``key`` must be equal in
    both scene ids (or ``key(scene)``, when ``key`` is a function, for both scenes). ``by="footprint"``: the
    ``other`` scene covering the largest share of the reference footprint, at least ``min_overlap``; needs a CRS on both. A scene left without a
    partner raises, or with ``on_unpaired="skip"`` is dropped (see :mod:`~domainmae.data.errors`).
    """
    if by not in ("name", "footprint"):
        raise ValueError(f"by must be 'name' or 'footprint', got {by!r}")
    policy = as_policy(on_unpaired)
    since = len(policy.skipped)
    partners: dict[str, RasterScene | None] = {}
    refs: dict[str, RasterScene]
    if by == "name":
        pattern = key if callable(key) else re.compile(key)
        refs, others = _by_key(reference, pattern), _by_key(other, pattern)
        partners = {k: others.get(k) for k in refs}
    else:
        refs = {scene.scene_id: scene for scene in reference}
        for ref_id, scene in refs.items():
            scored = [(_overlap(scene, candidate), candidate) for candidate in other]
            best = max(scored, key=lambda pair: pair[0], default=(0.0, None))
            partners[ref_id] = best[1] if best[0] >= min_overlap else None
    unpaired = [refs[k].scene_id for k, partner in partners.items() if partner is None]
    used = {id(p) for p in partners.values() if p is not None}
    unpaired += [scene.scene_id for scene in other if id(scene) not in used]
    for scene_id in unpaired:
        policy.handle(ValueError(f"scene {scene_id} has no {sensors[0]}/{sensors[1]} partner (by {by})"))
    policy.summarise(since, len(reference) + len(other), f"{sensors[0]} and {sensors[1]} scenes")
    return [
        MultiSensorScene({sensors[0]: refs[k], sensors[1]: partner}, reference=sensors[0])
        for k, partner in partners.items()
        if partner is not None
    ]
