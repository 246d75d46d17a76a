"""Microscopy export: Parquet/h5ad contents and provenance, streaming, atomic writes, profiles, real clients."""
import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tifffile
import torch

import domainmae
from domainmae.cli import main
from domainmae.data.transforms import self_standardize
from domainmae.export import aggregate, evaluate, feature_columns, normalize, profile, read_embeddings
from domainmae.export.embed import embed, file_sha256
from domainmae.export.stream import Export
from domainmae.export.writers import tables as tables_module
from domainmae.recipes import load_recipe
from domainmae.train.checkpoint import save_checkpoint

CHANNELS = ["DNA", "RNA", "AGP"]
TILE, FIELD = 16, (32, 48)  # 2 x 3 tiles per field
PLATES, WELLS = ("P1", "P2"), ("A01", "A02", "B01", "B02")


@pytest.fixture(scope="module")
def plate(tmp_path_factory) -> dict:
    """A two-plate manifest of 8 three-channel fields and a tiny model's checkpoint for it."""
    root = tmp_path_factory.mktemp("plate")
    rng = np.random.default_rng(0)
    rows = []
    for p in PLATES:
        for w in WELLS:
            row = {"Metadata_Plate": p, "Metadata_Well": w, "Metadata_Site": "1",
                   "Metadata_pert_type": "negcon" if w.startswith("A") else "trt", "Metadata_pert": w[0]}  # fmt: skip
            for c in CHANNELS:
                name = f"{p}_{w}_{c}.tif"
                tifffile.imwrite(root / name, rng.integers(0, 4000, FIELD, dtype=np.uint16))
                row |= {f"FileName_Orig{c}": name, f"PathName_Orig{c}": "."}
            rows.append(row)
    with open(root / "load_data.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    torch.manual_seed(0)  # module fixtures run before the per-test seeding
    model = domainmae.create_model("vit_tiny", channels=CHANNELS, patch_size=8, img_size=TILE, embed_dim=32, depth=1,
                                   num_heads=2, decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)  # fmt: skip
    recipe = load_recipe("cellpainting", [f"data.path={root / 'load_data.csv'}", f"data.channels={CHANNELS}",
                                          f"data.crop_size={TILE}", "data.num_workers=0", "model.patch_size=8"])  # fmt: skip
    ckpt = save_checkpoint(root / "run" / "checkpoints" / "last.ckpt", {
        "model_config": model.config.to_dict(), "model": model.state_dict(), "step": 2,
        "recipe": recipe.model_dump(mode="json"),
    })  # fmt: skip
    return {"root": root, "run": root / "run", "ckpt": ckpt, "model": model.eval()}


def _tiles(root: Path, plate: str, well: str, channels=CHANNELS) -> torch.Tensor:
    """The six grid tiles of one field, normalised as in training: ``[6, C, 16, 16]``, row-major."""
    image = np.stack([tifffile.imread(root / f"{plate}_{well}_{c}.tif") for c in channels]).astype(np.float32)
    tiles = [image[:, r : r + TILE, c : c + TILE] for r in range(0, FIELD[0], TILE) for c in range(0, FIELD[1], TILE)]
    return torch.stack([self_standardize(t) for t in tiles])


def test_parquet_has_metadata_features_provenance_and_model_values(plate, tmp_path, monkeypatch):
    monkeypatch.setattr(tables_module, "ROWS_PER_GROUP", 10)  # 48 rows -> several row groups, streamed
    out = embed(plate["run"], output=tmp_path / "emb.parquet", batch_size=5, progress=False)
    file = pq.ParquetFile(out)
    assert file.metadata.num_rows == 8 * 6 and file.metadata.num_row_groups == 5
    df = file.read().to_pandas()
    features = [c for c in df.columns if c.startswith("emb_")]
    assert features == [f"emb_{i:04d}" for i in range(32)]
    assert all(df[c].dtype == np.float32 for c in features)
    assert {"Metadata_Plate", "Metadata_Well", "Metadata_pert_type", "Metadata_TileRow", "Metadata_TileCol"} <= set(df)
    provenance = json.loads(file.schema_arrow.metadata[b"domainmae"])
    assert provenance["checkpoint_sha256"] == file_sha256(plate["ckpt"])
    assert provenance["channels"] == {"image": CHANNELS} and provenance["pool"] == "mean"
    assert provenance["recipe"] == "cellpainting" and provenance["model_config"]["embed_dim"] == 32
    rows = df[(df.Metadata_Plate == "P2") & (df.Metadata_Well == "B01")]
    assert rows[["Metadata_TileRow", "Metadata_TileCol"]].values.tolist() == [[0, 0], [0, 16], [0, 32], [16, 0],
                                                                              [16, 16], [16, 32]]  # fmt: skip
    with torch.no_grad():
        expected = plate["model"].embed(_tiles(plate["root"], "P2", "B01"), CHANNELS)
    np.testing.assert_allclose(rows[features].to_numpy(), expected.numpy(), rtol=1e-4, atol=1e-5)


def test_channel_subset_cls_pool_and_h5ad_image_level(plate, tmp_path):
    anndata = pytest.importorskip("anndata")  # the optional [h5ad] extra

    out = embed(plate["ckpt"], output=tmp_path / "emb.h5ad", channels=["AGP", "DNA"], pool="cls", level="image",
                progress=False)  # fmt: skip
    adata = anndata.read_h5ad(out)
    assert adata.shape == (8, 32) and adata.X.dtype == np.float32
    assert "Metadata_TileRow" not in adata.obs and list(adata.obs.Metadata_Well[:2]) == ["A01", "A02"]
    assert json.loads(adata.uns["domainmae"])["channels"] == {"image": ["AGP", "DNA"]}
    with torch.no_grad():
        tiles = _tiles(plate["root"], "P1", "A02", ["AGP", "DNA"])
        expected = plate["model"].embed(tiles, ["AGP", "DNA"], pool="cls").mean(0)
    np.testing.assert_allclose(adata.X[1], expected.numpy(), rtol=1e-4, atol=1e-5)
    normalised, features, _ = read_embeddings(profile(out, tmp_path / "norm.parquet", normalization="center_scale"))
    assert len(normalised) == 8 and np.allclose(normalised[features].mean(), 0, atol=1e-5)
    with pytest.raises(ValueError, match="'Mito' is not known to the model"):
        embed(plate["ckpt"], output=tmp_path / "x.parquet", channels=["Mito"], progress=False)


def test_existing_output_is_refused_and_a_crash_leaves_nothing(plate, tmp_path, monkeypatch, capsys):
    out = tmp_path / "emb.parquet"
    out.write_text("keep me")
    assert main(["embed", "--checkpoint", str(plate["run"]), "--output", str(out), "--quiet"]) == 1
    assert "already exists" in capsys.readouterr().err and out.read_text() == "keep me"

    calls = []
    original = Export.forward

    def crash_on_third_batch(self, samples, pool):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("simulated crash")
        return original(self, samples, pool)

    monkeypatch.setattr(tables_module, "ROWS_PER_GROUP", 4)  # rows already flushed to the temp file
    monkeypatch.setattr(Export, "forward", crash_on_third_batch)
    fresh = tmp_path / "fresh.parquet"
    with pytest.raises(RuntimeError, match="simulated"):
        embed(plate["run"], output=fresh, batch_size=8, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb.parquet"]  # no final file, no temp left


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_metadata_missing_in_the_first_batches_exports(plate, tmp_path, monkeypatch, suffix):
    # The first three fields have no compound and no dose: with one field (6 tiles) a batch and a row group,
    # the first batches hold only nulls (Parquet manifest) or empty cells (CSV), the later ones strings and ints.
    monkeypatch.setattr(tables_module, "ROWS_PER_GROUP", 6)
    with open(plate["root"] / "load_data.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    for i, row in enumerate(rows):
        row["Metadata_Compound"], row["Metadata_Dose"] = (None, None) if i < 3 else (f"cmpd{i}", 10 * i)
    manifest = tmp_path / f"drift{suffix}"
    for row in rows:  # the images stay where the plate fixture wrote them
        row |= {f"PathName_Orig{c}": str(plate["root"]) for c in CHANNELS}
    if suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), manifest)
    else:
        with open(manifest, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    tiles = embed(plate["run"], data=manifest, output=tmp_path / "tiles.parquet", batch_size=6, progress=False)
    # Image level: gathered for .h5ad (nulls included, from the Parquet manifest), streamed for .parquet.
    images = embed(plate["run"], data=manifest, output=tmp_path / ("images.h5ad" if suffix == ".parquet" else
                   "images.parquet"), level="image", batch_size=6, progress=False)  # fmt: skip
    df = pd.read_parquet(tiles)
    missing = None if suffix == ".parquet" else ""
    assert len(df) == 8 * 6 and pq.ParquetFile(tiles).metadata.num_row_groups == 8
    assert df.Metadata_Compound[:18].map(lambda v: v == missing or v is None).all()
    assert list(df.Metadata_Compound[18::6]) == [f"cmpd{i}" for i in range(3, 8)]
    if suffix == ".parquet":  # typed manifest: nullable int64 and string columns
        schema = pq.read_schema(tiles)
        assert schema.field("Metadata_Dose").type == pa.int64()
        assert schema.field("Metadata_Compound").type == pa.string()
        assert df.Metadata_Dose.isna().sum() == 18 and df.Metadata_Dose.iloc[-1] == 70
    per_image = read_embeddings(images)[0]
    assert len(per_image) == 8 and list(per_image.Metadata_Compound[3:]) == [f"cmpd{i}" for i in range(3, 8)]


@pytest.fixture(scope="module")
def tiles_file(plate, tmp_path_factory) -> Path:
    return embed(plate["run"], output=tmp_path_factory.mktemp("tiles") / "tiles.parquet", progress=False)


def test_well_level_and_normalisation_match_pycytominer(plate, tiles_file, tmp_path):
    pycytominer = pytest.importorskip("pycytominer")
    df, features, _ = read_embeddings(tiles_file)
    strata = ["Metadata_Plate", "Metadata_Well"]
    theirs = pycytominer.aggregate(pd.read_parquet(tiles_file), strata=strata, features=features, operation="mean")
    wells = embed(plate["run"], output=tmp_path / "wells.parquet", level="well", progress=False)
    ours = pd.read_parquet(wells).sort_values(strata).reset_index(drop=True)
    theirs = theirs.sort_values(strata).reset_index(drop=True)
    np.testing.assert_allclose(ours[features].to_numpy(), theirs[features].to_numpy(), rtol=1e-4, atol=1e-5)
    assert set(ours.Metadata_pert_type) == {"negcon", "trt"}  # constant within wells: kept

    query = "Metadata_pert_type == 'negcon'"
    normalized = profile(wells, tmp_path / "norm.parquet", normalization="center_scale", controls=query)
    theirs = pycytominer.normalize(str(wells), features=features, samples=query, method="standardize", output_file=None)
    ours = pd.read_parquet(normalized)
    np.testing.assert_allclose(ours[features].to_numpy(), theirs[features].to_numpy(), rtol=1e-3, atol=1e-4)
    provenance = read_embeddings(normalized)[2]
    assert provenance["profile"][0]["normalize"] == "center_scale" and "checkpoint_sha256" in provenance


def test_pycytominer_gets_our_features_by_name_and_its_output_reads_back(tiles_file, tmp_path):
    # pycytominer's features="infer" finds CellProfiler compartment columns (Cells_/Nuclei_/Cytoplasm_), which
    # embeddings are not (as for its own DeepProfiler features): the documented call names them explicitly.
    pycytominer = pytest.importorskip("pycytominer")
    df = pd.read_parquet(tiles_file)
    features = feature_columns(df)
    assert features == [f"emb_{i:04d}" for i in range(32)] and features == read_embeddings(tiles_file)[1]
    strata = ["Metadata_Plate", "Metadata_Well"]
    wells = tmp_path / "wells.parquet"
    pycytominer.aggregate(df, strata=strata, features=features, operation="median", output_file=str(wells),
                          output_type="parquet")  # fmt: skip
    kept = pycytominer.feature_select(str(wells), features=features, operation="variance_threshold", output_file=None)
    assert feature_columns(kept) and set(feature_columns(kept)) <= set(features)
    # pycytominer's file goes on through our profile and evaluate as one of ours would.
    back, names, _ = read_embeddings(wells)
    assert names == features and len(back) == 8
    normalized = profile(wells, tmp_path / "norm.parquet", normalization="center_scale",
                         controls="Metadata_Well in ['A01', 'A02']")  # fmt: skip
    assert feature_columns(pd.read_parquet(normalized)) == features
    report = evaluate(wells, label="Metadata_Plate", methods=["knn"], k=1, test_size=0.5)
    assert report["n_test"] == 4


def test_tvn_whitens_controls_per_plate(tiles_file):
    df, features, _ = read_embeddings(tiles_file)
    images = aggregate(df, features, ["Metadata_Image"], "median")
    assert len(images) == 8 and "Metadata_Plate" in images
    out, names = normalize(df, features, method="tvn", controls="Metadata_pert_type == 'negcon'", batch="Metadata_Plate")
    assert len(names) == 24 - 1  # 24 control tiles span 23 directions after centering
    for _, group in out[out.Metadata_pert_type == "negcon"].groupby("Metadata_Plate"):
        x = group[names].to_numpy(np.float64)
        np.testing.assert_allclose(x.mean(0), 0, atol=1e-4)
        assert np.allclose(x.std(0)[x.std(0) > 1e-3], 1, atol=1e-3)
    with pytest.raises(ValueError, match="selects no rows"):
        normalize(df, features, method="center_scale", controls="Metadata_pert_type == 'nothing'")


def test_without_controls_every_row_is_the_reference_as_in_pycytominer(tiles_file, tmp_path):
    # pycytominer normalises against samples="all" by default: plates without negative controls still profile.
    pycytominer = pytest.importorskip("pycytominer")
    df, features, _ = read_embeddings(tiles_file)
    out, names = normalize(df, features, method="center_scale", batch="Metadata_Plate")
    for _, group in out.groupby("Metadata_Plate"):
        x = group[names].to_numpy(np.float64)
        np.testing.assert_allclose(x.mean(0), 0, atol=1e-4)
        np.testing.assert_allclose(x.std(0), 1, atol=1e-3)
    path = profile(tiles_file, tmp_path / "all.parquet", normalization="center_scale")
    theirs = pycytominer.normalize(str(tiles_file), features=features, samples="all", method="standardize",
                                   output_file=None)  # fmt: skip
    np.testing.assert_allclose(pd.read_parquet(path)[features].to_numpy(), theirs[features].to_numpy(), atol=1e-4)
    assert read_embeddings(path)[2]["profile"][0]["controls"] == "all rows"


def test_copairs_map_runs_on_the_exported_file(tiles_file):
    copairs_map = pytest.importorskip("copairs.map")
    df = pd.read_parquet(tiles_file)
    features = [c for c in df.columns if c.startswith("emb_")]
    meta = df[[c for c in df.columns if c.startswith("Metadata_")]]
    ap = copairs_map.average_precision(meta, df[features].to_numpy(), pos_sameby=["Metadata_Image"], pos_diffby=[],
                                       neg_sameby=[], neg_diffby=["Metadata_Image"], progress_bar=False)  # fmt: skip
    assert len(ap) == len(df) and ap["average_precision"].between(0, 1).all()
    maps = copairs_map.mean_average_precision(ap, ["Metadata_Image"], null_size=100, threshold=0.05, seed=0,
                                              progress_bar=False)  # fmt: skip
    assert len(maps) == 8 and maps["mean_average_precision"].notna().all()


def test_a_manifest_metadata_field_column_is_kept_and_images_stay_apart(plate, tmp_path):
    """CellProfiler manifests often name the site ``Metadata_Field``: the export keeps the user's values and
    identifies each image in its own column, so image-level profiles do not merge the wells' same sites."""
    with open(plate["root"] / "load_data.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        row |= {"Metadata_Field": "F001"} | {f"PathName_Orig{c}": str(plate["root"]) for c in CHANNELS}
    manifest = tmp_path / "sites.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    tiles = embed(plate["run"], data=manifest, output=tmp_path / "tiles.parquet", progress=False)
    df = pd.read_parquet(tiles)
    assert (df.Metadata_Field == "F001").all()
    images = read_embeddings(profile(tiles, tmp_path / "images.parquet", level="image"))[0]
    assert len(images) == 8 and images.Metadata_Well.tolist() == [r["Metadata_Well"] for r in rows]
    pd.DataFrame([r | {"Metadata_Image": "mine"} for r in rows]).to_csv(manifest, index=False)
    with pytest.raises(ValueError, match=r"sites.csv.*'Metadata_Image'.*rename"):
        embed(plate["run"], data=manifest, output=tmp_path / "refused.parquet", progress=False)
    assert not (tmp_path / "refused.parquet").exists()


def test_aggregating_categorical_strata_makes_no_rows_for_absent_combinations():
    """AnnData reads strings back as categoricals: plate P2 has no well A01, so no P2/A01 row may appear."""
    df = pd.DataFrame({"Metadata_Plate": pd.Categorical(["P1", "P1", "P2"]),
                       "Metadata_Well": pd.Categorical(["A01", "A02", "B01"]), "emb_0000": [1.0, 2.0, 3.0]})  # fmt: skip
    wells = aggregate(df, ["emb_0000"], ["Metadata_Plate", "Metadata_Well"])
    assert wells[["Metadata_Plate", "Metadata_Well"]].astype(str).values.tolist() == [["P1", "A01"], ["P1", "A02"],
                                                                                     ["P2", "B01"]]  # fmt: skip
    assert wells.emb_0000.tolist() == [1.0, 2.0, 3.0]


def test_center_scale_keeps_feature_names_and_a_missing_batch_value_is_a_batch():
    df = pd.DataFrame({"B": [1.0, 1.0, np.nan, np.nan], "emb_0000": [1.0, 3.0, 10.0, 14.0],
                       "emb_0002": [0.0, 2.0, 4.0, 8.0]})  # fmt: skip
    out, names = normalize(df, ["emb_0000", "emb_0002"], method="center_scale", batch="B")
    assert names == ["emb_0000", "emb_0002"]  # per feature: the names stay (they were renumbered 0000, 0001)
    assert out[names].to_numpy().tolist() == [[-1, -1], [1, 1], [-1, -1], [1, 1]]  # the NaN rows: their own batch
    assert normalize(df, ["emb_0000", "emb_0002"], method="tvn")[1] == ["emb_0000", "emb_0001"]  # components


def test_overwrite_replaces_a_folder_output_with_a_file(plate, tmp_path):
    """A torchrun export writes ``.parquet`` as a folder of parts; one process with --overwrite replaces it
    with a file (it failed after embedding everything: a file cannot be renamed onto a folder)."""
    out = tmp_path / "emb.parquet"
    out.mkdir()
    (out / "part-00000.parquet").write_text("old part")
    (out / "_metadata").write_text("old footer")

    def crash(*args, **kwargs):
        raise RuntimeError("simulated crash")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Export, "forward", crash)
        with pytest.raises(RuntimeError, match="simulated"):
            embed(plate["run"], output=out, level="image", overwrite=True, progress=False)
    assert (out / "_metadata").read_text() == "old footer"  # a failed write leaves the old output
    embed(plate["run"], output=out, level="image", overwrite=True, progress=False)
    assert out.is_file() and len(read_embeddings(out)[0]) == 8
    assert [p.name for p in tmp_path.iterdir()] == ["emb.parquet"]


def test_a_field_read_in_part_under_skip_gets_no_image_row(plate, tmp_path, caplog):
    """on_error=skip: one channel of one field loses its lower strip. Its tiles that were read are tile rows;
    an image row averaged over the upper half would look like the whole field, so there is none."""
    with open(plate["root"] / "load_data.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        row.update({f"PathName_Orig{c}": str(plate["root"]) for c in CHANNELS})
    broken = tmp_path / "broken_DNA.tif"
    tifffile.imwrite(broken, np.full(FIELD, 1000, np.uint16), compression="zlib", rowsperstrip=TILE)
    with tifffile.TiffFile(broken) as tif:
        offset, count = tif.pages[0].dataoffsets[-1], tif.pages[0].databytecounts[-1]
    with open(broken, "r+b") as handle:  # the last strip's deflate stream no longer decodes
        handle.seek(offset)
        handle.write(b"\xff" * count)
    rows[2] |= {"FileName_OrigDNA": broken.name, "PathName_OrigDNA": str(tmp_path)}
    manifest = tmp_path / "partial.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    skip = ["data.on_error=skip"]
    tiles = pd.read_parquet(embed(plate["run"], data=manifest, output=tmp_path / "tiles.parquet", overrides=skip,
                                  progress=False))  # fmt: skip
    assert len(tiles) == 8 * 6 - 3  # the field's lower row of tiles is missing
    with caplog.at_level("WARNING", logger="domainmae.export.stream"):
        images = read_embeddings(embed(plate["run"], data=manifest, output=tmp_path / "images.parquet", level="image",
                                       overrides=skip, progress=False))[0]  # fmt: skip
    assert len(images) == 7 and rows[2]["Metadata_Well"] not in set(images[images.Metadata_Plate == "P1"].Metadata_Well)
    assert "3 of its 6 tiles" in caplog.text and "partial.csv" in caplog.text


def test_an_output_name_that_says_another_format_is_refused(plate, tiles_file, tmp_path, capsys):
    """``--format h5ad`` into ``emb.parquet`` once wrote HDF5 there, and ``profile --output prof.csv`` Parquet."""
    out = tmp_path / "emb.parquet"
    assert main(["embed", "--checkpoint", str(plate["run"]), "--output", str(out), "--format", "h5ad", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "'.parquet'" in err and "h5ad" in err and not out.exists()
    for name in ("prof.csv", "prof.tif"):
        assert main(["profile", str(tiles_file), "--output", str(tmp_path / name), "--level", "image"]) == 1
        err = capsys.readouterr().err
        assert f"'{Path(name).suffix}'" in err and ".parquet or .h5ad" in err and not (tmp_path / name).exists()
