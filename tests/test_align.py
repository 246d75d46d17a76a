"""CLIP-style alignment (issue 11): loss, retrieval, template filling, text tower round trip, CLI end to end."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import torch

pytest.importorskip("open_clip")

from domainmae.align import AlignModel, TextTower, TextTowerConfig, clip_loss, fill_template, recall_at_k  # noqa: E402
from domainmae.align import train as align_train  # noqa: E402
from domainmae.align.retrieval import chance_recall, format_scores  # noqa: E402
from domainmae.align.train import (  # noqa: E402
    align,
    align_embeddings,
    fit,
    held_out_scores,
    project_embeddings,
    search,
)
from domainmae.cli import main  # noqa: E402
from domainmae.export.embed import file_sha256  # noqa: E402
from domainmae.export.writers.tables import feature_names, read_embeddings, write_embeddings  # noqa: E402
from domainmae.runtime import checkpoint_file, load_trained  # noqa: E402
from domainmae.train import pretrain  # noqa: E402

from .conftest import SAMPLES  # noqa: E402

TINY_TEXT = TextTowerConfig(embed_dim=16, width=32, heads=2, layers=1, context_length=16)
TINY_FLY = ["data.crop_size=64", "model.patch_size=16", "model.embed_dim=32", "model.depth=1", "model.num_heads=2",
            "model.decoder_embed_dim=16", "model.decoder_depth=1", "model.decoder_num_heads=2", "train.batch_size=4",
            "data.crops_per_read=4"]  # fmt: skip
COLOURS = ("red", "green", "blue", "yellow")
SITES = "fly cells at site {Metadata_Site}"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A two-step run of the tiny cellpainting model on the bundled samples."""
    return pretrain("cellpainting", output=tmp_path_factory.mktemp("run") / "run", max_steps=2, overrides=TINY_FLY,
                    quiet=True)  # fmt: skip


def toy_pairs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` image embeddings ``[n, 32]``: one of four cluster centres plus noise, captioned by its cluster."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(0).normal(size=(len(COLOURS), 32))
    label = rng.integers(len(COLOURS), size=n)
    x = (centres[label] + 0.5 * rng.normal(size=(n, 32))).astype(np.float32)
    return x, np.array([f"a {COLOURS[i]} cell" for i in label], dtype=object)


def toy_file(path: Path, n: int = 80) -> Path:
    """An embeddings file of :func:`toy_pairs`, its colour as ``Metadata_Colour``, as ``embed`` writes one."""
    x, texts = toy_pairs(n, seed=2)
    df = pd.DataFrame(x, columns=feature_names(32)).assign(Metadata_Colour=[t.split()[1] for t in texts])
    return write_embeddings(path, df, feature_names(32), {"checkpoint": None})


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_a_failed_overwrite_leaves_the_old_aligned_folder_whole(tmp_path, monkeypatch) -> None:
    file, out = toy_file(tmp_path / "toy.parquet"), tmp_path / "aligned"
    align_embeddings(file, "a {Metadata_Colour} cell", out, text=TINY_TEXT, steps=2)
    before = folder_bytes(out)

    def broken(*args, **kwargs):  # the head's write fails after the new text tower is written
        raise OSError("disk full")

    monkeypatch.setattr(align_train, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        align_embeddings(file, "a {Metadata_Colour} cell", out, text=TINY_TEXT, steps=2, seed=1, overwrite=True)
    assert folder_bytes(out) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary folder left
    with pytest.raises(FileExistsError, match="not an aligned model folder"):
        align_embeddings(file, "a {Metadata_Colour} cell", tmp_path, text=TINY_TEXT, steps=2, overwrite=True)


def test_an_aligned_folder_still_works_after_a_move(tmp_path, monkeypatch) -> None:
    toy = toy_file(tmp_path / "toy.parquet")

    def fake_embed(checkpoint, output, **kwargs) -> Path:  # align's embedding step, without a model
        return Path(shutil.copy(toy, output))

    monkeypatch.setattr(align_train, "embed", fake_embed)
    info = align("run", "a {Metadata_Colour} cell", tmp_path / "aligned", text=TINY_TEXT, steps=2)
    assert info["embeddings"] == "embeddings.parquet"
    # Aligning again on the folder's own embeddings (overwrite) keeps them in the new folder.
    align_embeddings(tmp_path / "aligned" / "embeddings.parquet", "a {Metadata_Colour} cell", tmp_path / "aligned",
                     text=TINY_TEXT, steps=2, overwrite=True)  # fmt: skip
    moved = Path(shutil.move(tmp_path / "aligned", tmp_path / "moved"))
    info = json.loads((moved / "align.json").read_text())
    hits = search(moved, "a red cell", moved / info["embeddings"], top=3)
    assert len(hits) == 3 and "Metadata_Colour" in hits


def test_contrastive_loss_falls_and_retrieval_beats_chance() -> None:
    x, texts = toy_pairs(160, seed=1)
    train, test = np.arange(120), np.arange(120, 160)
    model = AlignModel(32, TextTower(TINY_TEXT))
    losses = fit(model, torch.from_numpy(x[train]), texts[train].tolist(), steps=60, batch_size=64, lr=3e-3, seed=0)
    # Captions shared by ~16 rows of a batch put the floor near log(16) = 2.8, not 0.
    assert np.mean(losses[-10:]) < np.mean(losses[:5]) - 2.0
    scores = held_out_scores(model, x, texts, train, test)
    assert scores["n_captions"] == 4
    assert scores["model"]["i2t@1"] > scores["chance"]["i2t@1"] + 0.4  # chance is 0.25
    assert scores["bag_of_words"]["i2t@1"] > scores["chance"]["i2t@1"]


def test_shared_captions_share_the_target() -> None:
    image = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    text = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # rows 0 and 1: one caption
    scale = torch.tensor(np.log(100.0))
    # Perfect pairs: the loss is the entropy of the targets, half on each of the two rows sharing a caption.
    loss = clip_loss(image, text, scale, torch.tensor([0, 0, 1]))
    assert float(loss) == pytest.approx(2 / 3 * np.log(2), abs=1e-4)


def test_recall_at_k_and_chance() -> None:
    similarity = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3]])  # the third image ranks the wrong caption first
    found = recall_at_k(similarity, np.array([0, 1, 1]), ks=(1, 2))
    assert found == {"i2t@1": pytest.approx(2 / 3), "i2t_macro@1": 0.75, "t2i@1": 1.0, "i2t@2": 1.0,
                     "i2t_macro@2": 1.0, "t2i@2": 1.0}  # fmt: skip
    chance = chance_recall(np.array([0, 1, 1]), 2, ks=(1,))
    assert chance["i2t@1"] == chance["i2t_macro@1"] == 0.5 and chance["t2i@1"] == pytest.approx((1 / 3 + 2 / 3) / 2)
    # k beyond the held-out images (3 rows, recall@5 and @10): a random ranking then returns every image.
    assert chance_recall(np.array([0, 1, 2]), 3) == pytest.approx({
        "i2t@1": 1 / 3, "i2t_macro@1": 1 / 3, "t2i@1": 1 / 3, **{f"{m}@{k}": 1.0 for m in ("i2t", "i2t_macro", "t2i")
                                                                 for k in (5, 10)}})  # fmt: skip


def test_balanced_recall_is_not_fooled_by_the_majority_caption() -> None:
    # Nine images of caption 0, one of caption 1, and a model that ranks caption 0 first for every image.
    captions = np.array([0] * 9 + [1])
    similarity = np.tile([0.9, 0.1], (10, 1))
    found = recall_at_k(similarity, captions, ks=(1,))
    assert found["i2t@1"] == pytest.approx(0.9)  # the majority's share
    assert found["i2t_macro@1"] == pytest.approx((9 / 9 + 0 / 1) / 2)  # caption 1 is never found
    # Three captions, uneven: per-caption recall 2/4, 1/1 and 0/2 -> macro 1/2, micro 3/7.
    captions = np.array([0, 0, 0, 0, 1, 2, 2])
    similarity = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 1, 0], [1, 0, 0], [0, 1, 0]], float)
    found = recall_at_k(similarity, captions, ks=(1,))
    assert found["i2t@1"] == pytest.approx(3 / 7) and found["i2t_macro@1"] == pytest.approx(0.5)
    assert "i2t_macro recall@1" in format_scores({"n_test": 7, "n_train": 0, "n_captions": 3, "model": found,
                                                  "bag_of_words": found, "chance": found})  # fmt: skip


def test_template_fills_from_the_manifest_and_names_a_missing_column() -> None:
    manifest = SAMPLES / "examplefly" / "load_data.csv"
    df = pd.read_csv(manifest)
    texts = fill_template(df, "fly cells at site {Metadata_Site} of {Metadata_Plate}", str(manifest))
    assert texts[0] == "fly cells at site POS002 of ExampleFly" and len(texts) == len(df)
    with pytest.raises(KeyError, match=r"Metadata_pert_iname.*load_data.csv"):
        fill_template(df, "cells treated with {Metadata_pert_iname}", str(manifest))
    labels = pd.DataFrame({"labels": [["Pastures", "Arable land"]]})  # BigEarthNet's CORINE lists
    assert fill_template(labels, "a satellite image of {labels}") == ["a satellite image of Pastures, Arable land"]
    sites = pd.DataFrame({"Metadata_Site": [1, 12], "emb_0000": [0.5, 0.25]})  # all numeric: rows were floats
    assert fill_template(sites, "site {Metadata_Site}") == ["site 1", "site 12"]
    assert fill_template(sites, "site {Metadata_Site:03d}") == ["site 001", "site 012"]
    with pytest.raises(ValueError, match="positional field"):
        fill_template(sites, "site {}")
    with pytest.raises(ValueError, match=r"does not fit the values of .*Unknown format code"):
        fill_template(df, "site {Metadata_Site:03d}", str(manifest))
    with pytest.raises(ValueError, match=r"text template 'site \{Metadata_Site' is malformed: expected '\}'"):
        fill_template(df, "site {Metadata_Site", str(manifest))


def test_training_settings_that_cannot_train_are_refused_by_name(tmp_path) -> None:
    file = toy_file(tmp_path / "toy.parquet")
    for settings, says in (({"steps": 0}, "steps must be at least 1"), ({"batch_size": 0}, "batch_size must be")):
        with pytest.raises(ValueError, match=says):
            align_embeddings(file, "a {Metadata_Colour} cell", tmp_path / "aligned", text=TINY_TEXT, **settings)
    with pytest.raises(ValueError, match=r"text tower width 7 is not a multiple of its 2 heads"):
        TextTowerConfig(embed_dim=8, width=7, heads=2, layers=1, context_length=8)


def test_align_errors_name_the_output_not_its_temporary_folder(tmp_path, monkeypatch) -> None:
    toy = toy_file(tmp_path / "toy.parquet")
    monkeypatch.setattr(align_train, "embed", lambda checkpoint, output, **kwargs: Path(shutil.copy(toy, output)))
    with pytest.raises(KeyError) as raised:
        align("run", "a {Metadata_Nope} cell", tmp_path / "aligned", text=TINY_TEXT, steps=2)
    assert str(tmp_path / "aligned" / "embeddings.parquet") in str(raised.value)
    assert "/." not in str(raised.value)  # no hidden temporary folder named


def test_text_tower_saves_and_reloads(tmp_path) -> None:
    tower = TextTower(TINY_TEXT).eval()
    captions = ["a pH3-positive nucleus", "a pH3-negative nucleus"]
    with torch.no_grad():
        before = tower(captions)
    again = TextTower.load(tower.save(tmp_path / "tower")).eval()
    with torch.no_grad():
        assert torch.equal(before, again(captions))
    assert again.config == TINY_TEXT
    with pytest.raises(FileNotFoundError, match="text.json"):
        TextTower.load(tmp_path)


def test_pretrained_text_tower_from_a_local_open_clip_file(tmp_path) -> None:
    import open_clip

    # A tiny open_clip model registered from a config file; its weights saved locally, as a user's download.
    config = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16},
              "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}  # fmt: skip
    (tmp_path / "tiny-clip.json").write_text(json.dumps(config))
    open_clip.add_model_config(tmp_path / "tiny-clip.json")
    clip = open_clip.create_model("tiny-clip")
    torch.save(clip.state_dict(), tmp_path / "tiny.pt")
    tower = TextTower.pretrained("tiny-clip", str(tmp_path / "tiny.pt")).eval()
    tokens = tower.tokenize(["a pH3-positive nucleus"])
    with torch.no_grad():
        assert torch.allclose(tower(["a pH3-positive nucleus"]), clip.eval().encode_text(tokens), atol=1e-6)
    with pytest.raises(ValueError, match="no model config 'nope'"):
        TextTower.pretrained("nope", "x.pt")


@pytest.mark.slow
def test_cli_align_and_search_end_to_end(tmp_path, capsys) -> None:
    run = pretrain("cellpainting", output=tmp_path / "run", max_steps=2, overrides=TINY_FLY, quiet=True)
    aligned = tmp_path / "aligned"
    tiny = ["--text-width", "32", "--text-heads", "2", "--text-layers", "1", "--context-length", "16",
            "--embed-dim", "16"]  # fmt: skip
    assert main(["align", "--checkpoint", str(run), "--text", "fly cells at site {Metadata_Site}", "--output",
                 str(aligned), "--steps", "5", *tiny]) == 0  # fmt: skip
    info = json.loads((aligned / "align.json").read_text())
    assert info["scores"]["n_captions"] == 3 and len(info["losses"]) == 5
    assert "recall@1" in capsys.readouterr().out
    out = tmp_path / "hits.csv"
    assert main(["search", "--checkpoint", str(aligned), "--text", "fly cells at site POS076",
                 str(aligned / "embeddings.parquet"), "--top", "4", "--output", str(out)]) == 0  # fmt: skip
    hits = pd.read_csv(out)
    assert len(hits) == 4 and hits["score"].is_monotonic_decreasing and "Metadata_Site" in hits
    projected = tmp_path / "aligned.parquet"
    assert main(["embed", "--checkpoint", str(run), "--aligned", str(aligned), "--output", str(projected),
                 "--quiet"]) == 0  # fmt: skip
    df, features, provenance = read_embeddings(projected)
    assert len(features) == 16 and provenance["aligned_template"] == "fly cells at site {Metadata_Site}"
    assert np.allclose(np.linalg.norm(df[features].to_numpy(), axis=1), 1, atol=1e-5)
    assert main(["align", "--checkpoint", str(run), "--text", "{Metadata_Dose}", "--output", str(tmp_path / "x"),
                 *tiny]) == 1  # fmt: skip
    assert "Metadata_Dose" in capsys.readouterr().err


def test_cli_align_on_multi_sensor_scenes_in_three_utm_zones(tmp_path, capsys) -> None:
    # The bundled BigEarthNet S1+S2 pairs lie in UTM zones 29, 33 and 35: one GeoParquet geometry needs one CRS.
    from .test_export_bigearthnet import TINY_SENTINEL

    run = pretrain("sentinel", output=tmp_path / "run", max_steps=1, overrides=TINY_SENTINEL, quiet=True)
    tiny = ["--text-width", "32", "--text-heads", "2", "--text-layers", "1", "--context-length", "32",
            "--embed-dim", "16", "--steps", "3", "--test-size", "0.5"]  # fmt: skip
    args = ["align", "--checkpoint", str(run), "--text", "a satellite image of {labels}", *tiny]
    assert main([*args, "--output", str(tmp_path / "refused")]) == 1
    err = capsys.readouterr().err  # naming the file by its own place, not the temporary folder's
    assert f"{tmp_path / 'refused' / 'embeddings.parquet'}: the scenes are in 3 CRSs" in err and "--crs" in err
    assert not (tmp_path / "refused").exists()
    aligned = tmp_path / "aligned"
    assert main([*args, "--output", str(aligned), "--crs", "EPSG:4326"]) == 0
    df, _, provenance = read_embeddings(aligned / "embeddings.parquet")
    assert df["scene_id"].nunique() == 6 and provenance["crs"] == "EPSG:4326"
    assert json.loads((aligned / "align.json").read_text())["scores"]["n_captions"] >= 1
    # Text-aligned chips keep their footprints: the same rows, geometry and CRS as the encoder's GeoParquet.
    projected = tmp_path / "aligned.parquet"
    assert main(["embed", "--checkpoint", str(run), "--aligned", str(aligned), "--output", str(projected),
                 "--crs", "EPSG:4326", "--quiet"]) == 0  # fmt: skip
    chips, encoded = gpd.read_parquet(projected), gpd.read_parquet(aligned / "embeddings.parquet")
    assert chips.crs.to_epsg() == 4326 and chips.geometry.geom_equals_exact(encoded.geometry, 1e-9).all()
    assert np.allclose(np.linalg.norm(np.stack(chips["embedding"]), axis=1), 1, atol=1e-5)
    assert read_embeddings(projected)[2]["aligned_template"] == "a satellite image of {labels}"
    # Searching the projected file would project it again: refused, as is a raster output.
    with pytest.raises(ValueError, match="holds text-aligned embeddings already"):
        search(aligned, "a satellite image of forest", projected)
    for output in ("chips.tif", "chips"):
        assert main(["embed", "--checkpoint", str(run), "--aligned", str(aligned), "--output", str(tmp_path / output),
                     "--quiet"]) == 1  # fmt: skip
        assert "embed --aligned writes a table" in capsys.readouterr().err
    with pytest.raises(ValueError, match="top must be 0 or more"):
        search(aligned, "forest", aligned / "embeddings.parquet", top=-1)


@pytest.mark.slow
def test_unfreeze_fine_tunes_the_encoder_and_embed_aligned_uses_it(tiny_run, tmp_path, capsys) -> None:
    out = tmp_path / "tuned"
    info = align(tiny_run, SITES, out, unfreeze=True, text=TINY_TEXT, steps=6, batch_size=32, lr=3e-3)
    assert np.mean(info["losses"][-2:]) < info["losses"][0]
    base, tuned = load_trained(tiny_run).model.state_dict(), load_trained(out / "encoder").model.state_dict()
    changed = {name.split(".")[0] for name in base if not torch.equal(base[name], tuned[name])}
    assert {"blocks", "patch_embed", "norm"} <= changed and not any(n.startswith("decoder") for n in changed)
    # The table was written by the fine-tuned encoder in memory; embed --aligned reloads it from the folder.
    projected, expected = tmp_path / "projected.parquet", tmp_path / "expected.parquet"
    assert main(["embed", "--checkpoint", str(tiny_run), "--aligned", str(out), "--output", str(projected),
                 "--quiet"]) == 0  # fmt: skip
    project_embeddings(out, out / "embeddings.parquet", expected)
    (got, features, _), (want, _, _) = read_embeddings(projected), read_embeddings(expected)
    assert len(got) == len(want) == 768
    assert np.allclose(got[features].to_numpy(), want[features].to_numpy(), atol=1e-5)
    assert len(search(out, "fly cells at site POS076", out / "embeddings.parquet", top=2)) == 2

    frozen = align(tiny_run, SITES, tmp_path / "frozen", text=TINY_TEXT, steps=2)
    assert "encoder" not in frozen and not (tmp_path / "frozen" / "encoder").exists()
    assert frozen["checkpoint_sha256"] == file_sha256(checkpoint_file(tiny_run))  # the run's encoder, untouched
    with pytest.raises(ValueError, match="embed --aligned"):  # the frozen encoder's rows do not fit the tuned head
        search(out, "fly cells", tmp_path / "frozen" / "embeddings.parquet")
    assert main(["align", "--embeddings", str(out / "embeddings.parquet"), "--unfreeze", "--text", SITES,
                 "--output", str(tmp_path / "x")]) == 1  # fmt: skip
    assert "--unfreeze fine-tunes the encoder on the images" in capsys.readouterr().err


def test_embed_aligned_refuses_another_checkpoint_or_a_kept_output_before_embedding(tiny_run, tmp_path, capsys,
                                                                                     monkeypatch) -> None:
    # These were found only once every image was embedded (minutes to hours on a plate), then thrown away.
    aligned = tmp_path / "aligned"
    align(tiny_run, SITES, aligned, text=TINY_TEXT, steps=2)
    other = pretrain("cellpainting", output=tmp_path / "other", max_steps=1, overrides=TINY_FLY, quiet=True)
    kept = tmp_path / "kept.parquet"
    kept.write_bytes(b"earlier")

    def embedded(*args, **kwargs):
        raise AssertionError("embedded before the checks")

    monkeypatch.setattr("domainmae.export.embed.embed", embedded)
    for checkpoint, output, message in ((other, tmp_path / "new.parquet", "aligned on another checkpoint"),
                                        (tiny_run, kept, "already exists")):  # fmt: skip
        assert main(["embed", "--checkpoint", str(checkpoint), "--aligned", str(aligned), "--output", str(output),
                     "--quiet"]) == 1  # fmt: skip
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
    assert kept.read_bytes() == b"earlier" and not (tmp_path / "new.parquet").exists()


@pytest.fixture
def toy_aligned(tmp_path) -> tuple[Path, Path]:
    """A toy embeddings file and a two-step aligned model of it (no encoder: fast)."""
    file = toy_file(tmp_path / "toy.parquet")
    align_embeddings(file, "a {Metadata_Colour} cell", tmp_path / "aligned", text=TINY_TEXT, steps=2)
    return file, tmp_path / "aligned"


def test_search_output_is_written_atomically_into_a_new_folder(toy_aligned, tmp_path, monkeypatch) -> None:
    file, aligned = toy_aligned
    out = tmp_path / "new" / "sub" / "hits.csv"
    assert main(["search", "--checkpoint", str(aligned), "--text", "a red cell", str(file), "--output", str(out)]) == 0
    good = out.read_bytes()

    def torn(self, path, **kwargs) -> None:  # a full disk: part of the file written, then the error
        Path(path).write_text("Metadata_Colour,sco")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", torn)
    assert main(["search", "--checkpoint", str(aligned), "--text", "a blue cell", str(file), "--output", str(out),
                 "--overwrite"]) == 1  # fmt: skip
    assert out.read_bytes() == good and [p.name for p in out.parent.iterdir()] == ["hits.csv"]


def test_search_keeps_an_existing_output_without_overwrite_and_its_input_always(toy_aligned, tmp_path, capsys) -> None:
    file, aligned = toy_aligned
    before = file.read_bytes()
    query = ["search", "--checkpoint", str(aligned), "--text", "a red cell", str(file), "--output"]
    for extra in ([], ["--overwrite"]):
        assert main([*query, str(file), *extra]) == 1
        assert f"{file} is an input of this command" in capsys.readouterr().err
    assert file.read_bytes() == before
    out = tmp_path / "hits.csv"
    out.write_text("earlier")
    assert main([*query, str(out)]) == 1
    assert f"{out} already exists" in capsys.readouterr().err and out.read_text() == "earlier"
    assert main([*query, str(out), "--overwrite"]) == 0 and "score" in pd.read_csv(out)
