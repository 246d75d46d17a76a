"""``embed`` under torchrun: two gloo processes each write their part of the rows (or their scenes' rasters) into
one folder, which reads back as the single-process output row for row; formats that cannot be split are
refused; a failure in one process leaves no output. One launch runs every case (a worker script, below), so
the suite pays the start of two processes once."""
import csv
import json
import os
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import geopandas as gpd
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

import domainmae.export.embed as embed_module
from domainmae.distributed import DistInfo
from domainmae.export import read_embeddings
from domainmae.export.embed import embed
from domainmae.export.parts import owned
from domainmae.export.writers.raster import read_embedding_raster
from domainmae.train import pretrain

from .conftest import SAMPLES, torchrun
from .test_export_bigearthnet import TINY_SENTINEL

pytestmark = pytest.mark.slow
TINY_FLY = ["data.crop_size=128", "model.patch_size=16", "model.embed_dim=32", "model.depth=1", "model.num_heads=2",
            "model.decoder_embed_dim=16", "model.decoder_depth=1", "model.decoder_num_heads=2", "train.batch_size=4",
            "data.crops_per_read=4", "train.checkpoint_every=100"]  # fmt: skip
# Run by each process: the jobs of a JSON file one after another, every outcome ("ok" or the error) written to
# <folder>/rank<RANK>.json. A job with "fail_rank" makes that rank's second model call raise.
WORKER = """
import json, os, sys
import domainmae.export.embed as embed_module
from domainmae.export.embed import embed
from domainmae.export.parts import owned
from domainmae.export.stream import Export
from domainmae.export.writers import tables

tables.ROWS_PER_GROUP = 16  # parts of several row groups, some flushed before an injected failure
rank, real, outcomes = int(os.environ["RANK"]), Export.forward, []
for job in json.loads(open(sys.argv[1]).read()):
    calls = []

    def forward(self, samples, pool):
        calls.append(1)
        if len(calls) == 2 and job.get("fail_rank") == rank:
            raise RuntimeError("injected failure")
        return real(self, samples, pool)

    Export.forward = forward
    try:
        embed(**job["kwargs"], device="cpu", progress=False)
        outcomes.append("ok")
    except Exception as err:
        outcomes.append(f"{type(err).__name__}: {err}")
json.dump(outcomes, open(os.path.join(sys.argv[2], f"rank{rank}.json"), "w"))
"""


def _wells_manifest(folder: Path) -> Path:
    """The three fly fields as five fields of four wells: A01 has two sites, so ``Metadata_Site`` is constant
    within the wells of the second process's part only, and must still be dropped there as in one table."""
    fly = SAMPLES / "examplefly"
    with open(fly / "load_data.csv", newline="") as handle:
        fields = list(csv.DictReader(handle))
    rows = []
    for well, site, field in [("A01", "1", 0), ("A01", "2", 1), ("A02", "1", 2), ("B01", "1", 1), ("B02", "1", 0)]:
        row = {**fields[field], "Metadata_Well": well, "Metadata_Site": site}
        rows.append(row | {k: str(fly) for k in row if k.startswith("PathName_")})
    path = folder / "wells.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _one_scene(folder: Path) -> Path:
    """The first BigEarthNet S2 patch and its S1 pair alone (copies; the reader does not follow links)."""
    for sensor, name in (("S2", "S2A_MSIL2A_20170613T101031_87_48"), ("S1", "S1A_IW_GRDH_1SDV_20170613T165043_33UUP_87_48")):
        shutil.copytree(SAMPLES / "bigearthnet-mm" / f"BigEarthNet-{sensor}-Example" / name,
                        folder / f"BigEarthNet-{sensor}-Example" / name)  # fmt: skip
    return folder


@pytest.fixture(scope="module")
def launch(tmp_path_factory) -> dict:
    """Tiny fly and S1+S2 models (one step each), and every job run once by two processes: their outputs and
    each rank's outcomes; plus what the same jobs need to compare with."""
    root = tmp_path_factory.mktemp("dist")
    fly = pretrain("cellpainting", output=root / "fly", max_steps=1, overrides=TINY_FLY, quiet=True)
    ben = pretrain("sentinel", output=root / "ben", max_steps=1, overrides=TINY_SENTINEL, quiet=True)
    two = root / "two"
    two.mkdir()
    (two / "keep.parquet").write_text("keep me")
    jobs = {
        "tiles": {"kwargs": {"checkpoint": str(fly), "output": "tiles.parquet", "batch_size": 16}},
        "wells": {"kwargs": {"checkpoint": str(fly), "output": "wells.parquet", "level": "well",
                             "data": str(_wells_manifest(root))}},
        "h5ad": {"kwargs": {"checkpoint": str(fly), "output": "tiles.h5ad"}},
        "chips": {"kwargs": {"checkpoint": str(ben), "output": "chips.parquet", "crs": "EPSG:4326", "batch_size": 8}},
        "rasters": {"kwargs": {"checkpoint": str(ben), "output": "rasters", "format": "geotiff"}},
        "one_file": {"kwargs": {"checkpoint": str(ben), "output": "scene.tif", "data": str(_one_scene(root / "one_scene"))}},
        "failed": {"kwargs": {"checkpoint": str(fly), "output": "keep.parquet", "overwrite": True}, "fail_rank": 1},
    }  # fmt: skip
    for job in jobs.values():
        job["kwargs"]["output"] = str(two / job["kwargs"]["output"])
    (root / "jobs.json").write_text(json.dumps(list(jobs.values())))
    (root / "worker.py").write_text(WORKER)
    done = subprocess.run(torchrun(str(root / "worker.py"), str(root / "jobs.json"), str(root)),
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((root / f"rank{r}.json").read_text()) for r in range(2)]
    outcomes = {name: [rank[i] for rank in ranks] for i, name in enumerate(jobs)}
    return {"root": root, "two": two, "jobs": jobs, "outcomes": outcomes}


def _single(launch: dict, name: str) -> Path:
    """The job ``name`` run in this one process, beside the two-process outputs."""
    kwargs = launch["jobs"][name]["kwargs"]
    return embed(**{**kwargs, "output": launch["root"] / "one" / Path(kwargs["output"]).name}, device="cpu",
                 progress=False)  # fmt: skip


def _assert_same_table(launch: dict, name: str) -> tuple[Path, Path]:
    """The folder of parts reads back as the single-process file: same rows in the same order, columns, types
    and provenance; each process wrote a part, and ``_metadata`` lists every row group."""
    assert launch["outcomes"][name] == ["ok", "ok"]
    folder, single = Path(launch["jobs"][name]["kwargs"]["output"]), _single(launch, name)
    assert single.is_file() and folder.is_dir()
    assert sorted(p.name for p in folder.iterdir()) == ["_metadata", "part-00000.parquet", "part-00001.parquet"]
    one, two = pq.read_table(single), pq.read_table(folder)
    assert two.schema.equals(one.schema) and two.equals(one)
    summary = pq.read_metadata(folder / "_metadata")
    assert summary.num_rows == one.num_rows and summary.num_row_groups == sum(
        pq.read_metadata(part).num_row_groups for part in folder.glob("part-*"))
    for part in folder.glob("part-*"):
        assert pq.read_schema(part).metadata == pq.read_schema(single).metadata  # provenance (and geo) on every part
    return folder, single


def test_tiles_of_fields_split_over_two_processes_read_back_as_one_table(launch):
    folder, _ = _assert_same_table(launch, "tiles")
    df, features, provenance = read_embeddings(folder)
    assert len(features) == 32 and provenance["level"] == "tile"
    fields = [pq.read_table(part).column("Metadata_Image").unique().to_pylist() for part in sorted(folder.glob("part-*"))]
    assert len(fields[0]) == 1 and len(fields[1]) == 2 and not set(fields[0]) & set(fields[1])  # 3 fields: 1 + 2


def test_wells_are_averaged_by_the_process_that_owns_all_their_fields(launch):
    folder, _ = _assert_same_table(launch, "wells")
    assert "Metadata_Site" not in pq.read_table(folder).column_names  # varies within A01, in part 0 only
    assert pq.read_table(folder).column("Metadata_Well").to_pylist() == ["A01", "A02", "B01", "B02"]


def test_geoparquet_parts_read_as_one_frame_by_geopandas(launch):
    folder, single = _assert_same_table(launch, "chips")
    one, two = gpd.read_parquet(single), gpd.read_parquet(folder)
    assert two.crs.to_epsg() == 4326 and two.geometry.geom_equals(one.geometry).all() and len(two) == 6 * 9


def test_each_scene_raster_is_written_once_and_equals_the_single_process_one(launch):
    assert launch["outcomes"]["rasters"] == ["ok", "ok"]
    folder, single = Path(launch["jobs"]["rasters"]["kwargs"]["output"]), _single(launch, "rasters")
    names = sorted(p.name for p in single.iterdir())
    assert len(names) == 6 and sorted(p.name for p in folder.iterdir()) == names
    for name in names:
        (a, ta, ca, pa_), (b, tb, cb, pb) = read_embedding_raster(single / name), read_embedding_raster(folder / name)
        np.testing.assert_array_equal(a, b)
        assert ta == tb and ca == cb and pa_ == pb


def test_a_one_scene_raster_file_is_written_by_one_process(launch):
    assert launch["outcomes"]["one_file"] == ["ok", "ok"]
    (a, ta, ca, pa_), (b, tb, cb, pb) = (read_embedding_raster(_single(launch, "one_file")),
                                         read_embedding_raster(Path(launch["jobs"]["one_file"]["kwargs"]["output"])))
    np.testing.assert_array_equal(a, b)
    assert ta == tb and ca == cb and pa_ == pb


def test_h5ad_cannot_be_split_and_is_refused_by_every_process(launch):
    outcomes = launch["outcomes"]["h5ad"]
    assert all(o.startswith("ValueError:") and "tiles.h5ad: h5ad cannot be written in parts" in o for o in outcomes)
    assert not Path(launch["jobs"]["h5ad"]["kwargs"]["output"]).exists()


def test_a_failure_in_one_process_fails_both_and_leaves_the_old_output(launch):
    mine, other = launch["outcomes"]["failed"][1], launch["outcomes"]["failed"][0]
    assert mine == "RuntimeError: injected failure"
    assert other.startswith("RankFailed:") and "rank 1: RuntimeError: injected failure" in other
    assert (launch["two"] / "keep.parquet").read_text() == "keep me"
    assert not [p.name for p in launch["two"].iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_one_process_writes_one_file_byte_for_byte_as_the_writer_alone(launch, tmp_path, monkeypatch):
    out = embed(launch["root"] / "fly", output=tmp_path / "emb.parquet", device="cpu", progress=False)
    assert out.is_file() and pq.ParquetFile(out).metadata.num_rows == 3 * 8 * 8  # 8 x 8 tiles of 128 px per field
    # The export as it was before parts: the stream straight into the writer.
    monkeypatch.setattr(embed_module, "write_table_parts", lambda output, info, write, rows, *args, **kw:
                        write(output, rows, *args, **kw))  # fmt: skip
    before = embed(launch["root"] / "fly", output=tmp_path / "before.parquet", device="cpu", progress=False)
    assert out.read_bytes() == before.read_bytes()


def test_units_are_cut_into_contiguous_blocks_and_a_well_stays_whole():
    fields = [SimpleNamespace(meta={"Metadata_Plate": "P", "Metadata_Well": w}) for w in "AABCAD"]
    ranks = [DistInfo(rank, 2, rank, torch.device("cpu")) for rank in range(2)]
    assert [owned(fields, r, level="tile", one_file=False) for r in ranks] == [fields[:3], fields[3:]]
    wells = [[f.meta["Metadata_Well"] for f in owned(fields, r, level="well", one_file=False)] for r in ranks]
    assert wells == [list("AABA"), list("CD")]  # A's three fields on one rank, non-adjacent ones too
    assert [owned(fields, r, level="tile", one_file=True) for r in ranks] == [[], fields]  # one file: one writer


def test_the_other_processes_report_a_failed_rank_as_a_clean_cli_error(monkeypatch, capsys):
    """A rank that did not fail itself stops with RankFailed: the CLI shows it as one line (the failing rank's
    own message is printed by that rank), not a traceback."""
    import domainmae.export.embed as embed_module
    from domainmae.cli import main
    from domainmae.export.parts import RankFailed

    def failed_elsewhere(*args, **kwargs):
        raise RankFailed("embedding: 1 of 2 processes failed (rank 1: OSError: x.tif: truncated); it was not written")

    monkeypatch.setattr(embed_module, "embed", failed_elsewhere)
    assert main(["embed", "--checkpoint", "run", "--output", "emb.parquet"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("domainmae embed: error: embedding: 1 of 2 processes failed (rank 1: OSError")
