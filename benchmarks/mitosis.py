"""Build a single-cell mitosis dataset from the bundled ExampleFly and ExampleHuman fields.

Every field carries DNA, pH3 (phospho-histone H3, a marker of mitotic cells) and actin. Nuclei are
segmented on DNA, each nucleus is labelled pH3-positive or not from its pH3 intensity, and a fixed-size
crop of DNA and actin (pH3 left out, so an encoder never sees the label's channel) centred on the nucleus
is written as one TIFF per channel, listed in a CellProfiler ``load_data`` manifest that the toolkit reads
with its normal manifest reader (``data.format=manifest``). Label and field go in ``Metadata_*`` columns,
which embedding export carries to every row.

Segmentation: Gaussian smoothing (sigma 1 px), Otsu threshold, small objects removed, holes filled, then a
watershed on the distance transform from its local maxima to split touching nuclei.

pH3 rule: a nucleus is positive when its mean pH3 intensity exceeds ``median + k * MAD`` of the per-nucleus
means in its own field (MAD scaled by 1.4826 to a normal sigma; ``k`` = 3 by default). Per field, because
stain and exposure differ between fields and sets; robust, because positives are rare outliers.

    python benchmarks/mitosis.py /tmp/mitosis            # writes /tmp/mitosis/load_data.csv + crops/
"""
from __future__ import annotations

import argparse
import csv
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import tifffile
from scipy import ndimage as ndi

from domainmae.data.tiff import load_data_fields
from domainmae.deps import require

SAMPLES = Path(__file__).resolve().parents[1] / "datasets" / "samples"
MANIFESTS = (SAMPLES / "examplefly" / "load_data.csv", SAMPLES / "examplehuman" / "load_data.csv")
CHANNELS = ("DNA", "PH3", "Actin")  # the names both sample manifests use (FileName_Orig<name>)
ENCODER_CHANNELS = ("DNA", "Actin")  # what the crops keep: pH3 is the label's source
LABEL = "Metadata_Mitotic"
FIELD = "Metadata_SourceField"  # the field a crop was cut from (embed writes Metadata_Image: the crop)


@dataclass
class Nuclei:
    """The nuclei of one field: label image, centroids ``[N, 2]`` (row, col), mean pH3 and the label."""

    field: str
    labels: np.ndarray
    centroids: np.ndarray
    ph3: np.ndarray
    positive: np.ndarray
    threshold: float


def _skimage(part: str) -> ModuleType:
    """A scikit-image module, imported when nuclei are segmented: the EO benchmark and --help need none."""
    return require(f"skimage.{part}", "segmenting nuclei (the mitosis benchmark)", "pip install -e '.[bench]'")


def segment_nuclei(dna: np.ndarray, min_area: int = 20, sigma: float = 1.0, min_distance: int = 4) -> np.ndarray:
    """Nucleus label image ``[H, W]`` (0 = background) from a DNA plane ``[H, W]``."""
    feature, filters, measure, segmentation = map(_skimage, ("feature", "filters", "measure", "segmentation"))
    smooth = filters.gaussian(dna.astype(np.float32), sigma=sigma, preserve_range=True)
    foreground = smooth > filters.threshold_otsu(smooth)
    # Debris and noise specks are far smaller than any nucleus in either set (fly ~250 px, human ~90 px).
    blobs, _ = ndi.label(foreground)
    foreground = np.bincount(blobs.ravel())[blobs] >= min_area  # by area; works across scikit-image versions
    foreground = ndi.binary_fill_holes(foreground & (blobs > 0))
    distance = ndi.distance_transform_edt(foreground)
    # One marker per distance peak splits touching nuclei; smoothing first stops ragged edges from
    # giving one nucleus several peaks.
    peaks = feature.peak_local_max(ndi.gaussian_filter(distance, 1.0), min_distance=min_distance,
                                   labels=measure.label(foreground), exclude_border=False)  # fmt: skip
    markers = np.zeros(dna.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    return segmentation.watershed(-distance, markers, mask=foreground)


def ph3_positive(means: np.ndarray, k: float) -> tuple[np.ndarray, float]:
    """``(positive mask, threshold)``: mean above ``median + k * 1.4826 * MAD`` of the field's nuclei."""
    median = float(np.median(means))
    mad = 1.4826 * float(np.median(np.abs(means - median)))
    threshold = median + k * mad
    return means > threshold, threshold


def field_nuclei(field: str, dna: np.ndarray, ph3: np.ndarray, k: float) -> Nuclei:
    """Segment one field's nuclei and label each from its mean pH3 intensity."""
    labels = segment_nuclei(dna)
    props = _skimage("measure").regionprops(labels, intensity_image=ph3.astype(np.float32))
    centroids = np.array([p.centroid for p in props]).reshape(-1, 2)
    means = np.array([p.intensity_mean for p in props], np.float64)
    positive, threshold = ph3_positive(means, k)
    return Nuclei(field, labels, centroids, means, positive, threshold)


def field_name(meta: dict[str, str]) -> str:
    """``<plate>/<well>-<site>`` (or ``<plate>/<site>``) from a manifest row's metadata."""
    where = "-".join(str(meta[k]) for k in ("Metadata_Well", "Metadata_Site") if k in meta)
    return f"{meta['Metadata_Plate']}/{where}"


def build(out: str | Path, crop: int = 32, k: float = 3.0, manifests: tuple[Path, ...] = MANIFESTS,
          limit: int | None = None) -> tuple[Path, list[dict[str, object]]]:  # fmt: skip
    """Write crops and ``out/load_data.csv``; return the manifest path and per-field counts.

    ``limit`` keeps the first ``limit`` fields (a quick test). Nuclei whose crop would leave the field are
    dropped (``dropped`` in the counts) rather than padded, so no crop carries invented pixels.
    """
    out = Path(out)
    (out / "crops").mkdir(parents=True, exist_ok=True)
    fields = [f for m in manifests for f in load_data_fields(m, channels=list(CHANNELS))][:limit]
    rows: list[dict[str, object]] = []
    counts: list[dict[str, object]] = []
    half = crop // 2
    for field in fields:
        image = field.pixels()  # [3, H, W] float32 in CHANNELS order
        name = field_name(field.meta)
        nuclei = field_nuclei(name, image[0], image[1], k)
        height, width = image.shape[1:]
        keep = [i for i, (r, c) in enumerate(np.rint(nuclei.centroids).astype(int))
                if half <= r <= height - half and half <= c <= width - half]  # fmt: skip
        slug = name.replace("/", "_")
        for i in keep:
            r, c = np.rint(nuclei.centroids[i]).astype(int)
            row: dict[str, object] = {"Metadata_Plate": field.meta["Metadata_Plate"], FIELD: name,
                                      "Metadata_Nucleus": i + 1, LABEL: int(nuclei.positive[i]),
                                      "Metadata_PH3": round(float(nuclei.ph3[i]), 3),
                                      "Metadata_Y": int(r), "Metadata_X": int(c)}  # fmt: skip
            for channel in ENCODER_CHANNELS:
                pixels = image[CHANNELS.index(channel), r - half : r - half + crop, c - half : c - half + crop]
                file = f"{slug}_{i + 1:04d}_{channel}.tif"
                # The source planes are 8-bit; keep them so, to write and read the stored values exactly.
                tifffile.imwrite(out / "crops" / file, pixels.astype(np.uint8))
                row[f"FileName_Orig{channel}"], row[f"PathName_Orig{channel}"] = file, "crops"
            rows.append(row)
        counts.append({"field": name, "nuclei": len(nuclei.ph3), "dropped": len(nuclei.ph3) - len(keep),
                       "positive": int(nuclei.positive[keep].sum()), "negative": int((~nuclei.positive[keep]).sum()),
                       "threshold": round(nuclei.threshold, 2)})  # fmt: skip
    manifest = out / "load_data.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return manifest, counts


def format_counts(counts: list[dict[str, object]]) -> str:
    """Per-field class counts as a text table."""
    lines = [f"{'field':<32}{'nuclei':>8}{'dropped':>9}{'pH3+':>7}{'pH3-':>7}{'threshold':>11}"]
    lines += [f"{c['field']:<32}{c['nuclei']:>8}{c['dropped']:>9}{c['positive']:>7}{c['negative']:>7}{c['threshold']:>11}"
              for c in counts]  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="folder for the crops and load_data.csv (created)")
    parser.add_argument("--crop", type=int, default=32, help="crop size in pixels (default 32)")
    parser.add_argument("--k", type=float, default=3.0, help="pH3+ above median + k*MAD of the field (default 3)")
    args = parser.parse_args()
    manifest, counts = build(args.out, args.crop, args.k)
    print(format_counts(counts))
    print(f"wrote {manifest}")


if __name__ == "__main__":
    main()
