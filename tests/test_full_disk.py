"""A write that runs out of room (a full disk, a quota, a file-size limit) is an error naming the output, and
leaves what was there before whole.

The file-size limit (``RLIMIT_FSIZE``, with ``SIGXFSZ`` ignored) makes every write past it fail with EFBIG in
this process, wherever the library writes from (GDAL, Arrow, safetensors, PIL): the same path through each
writer as ENOSPC on a full disk, without filling one.
"""
from __future__ import annotations

import resource
import shutil
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from domainmae.cli import main

LIMIT = 16 << 10  # bytes: more than a config or a log line, less than any of the outputs below


@contextmanager
def file_size_limit(nbytes: int) -> Iterator[None]:
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the process at the limit
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


def _contents(path: Path) -> dict[str, bytes]:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return {str(p.relative_to(path.parent)): p.read_bytes() for p in files}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("full")
    for recipe, name in (("sentinel", "s1s2"), ("cellpainting", "fly")):
        assert main(["pretrain", "--recipe", recipe, "--output", str(root / name), "--max-steps", "1"]) == 0
    assert main(["embed", "--checkpoint", str(root / "fly"), "--output", str(root / "fly.parquet"),
                 "--level", "image"]) == 0  # fmt: skip
    return root


@pytest.mark.slow
@pytest.mark.parametrize(("output", "argv"), [
    ("rasters", ["embed", "--checkpoint", "{root}/s1s2", "--format", "geotiff"]),
    ("zarr_rasters", ["embed", "--checkpoint", "{root}/s1s2", "--format", "zarr"]),
    ("model", ["export-model", "{root}/fly"]),
    ("profiles.parquet", ["profile", "{root}/fly.parquet", "--level", "image"]),
    ("recon.png", ["reconstruct", "--checkpoint", "{root}/fly"]),
])  # fmt: skip
def test_a_write_that_runs_out_of_room_names_the_output_and_keeps_the_earlier_one(
    runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], output: str, argv: list[str]
) -> None:
    target = tmp_path / output
    argv = [arg.format(root=runs) for arg in argv]
    # export-model takes its output as an argument, the others as --output
    argv = [*argv, str(target)] if argv[0] == "export-model" else [*argv, "--output", str(target)]
    assert main(argv) == 0
    before = _contents(target)
    capsys.readouterr()
    with file_size_limit(LIMIT):
        code = main([*argv, "--overwrite"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert f"error: cannot write {target}: " in err and "Traceback" not in err, err
    # GDAL drops the errors of tiles it flushes at close; the scratch file's failed read is what it reports
    assert "File too large" in err or "IReadBlock failed" in err, err
    assert _contents(target) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [output]  # no temporary file or folder left behind


@pytest.mark.slow
def test_a_checkpoint_that_runs_out_of_room_names_it_and_keeps_the_earlier_one(
    runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = shutil.copytree(runs / "fly", tmp_path / "fly")
    before = _contents(run / "checkpoints")
    capsys.readouterr()
    with file_size_limit(LIMIT):
        code = main(["pretrain", "--recipe", "cellpainting", "--output", str(run), "--resume", "--max-steps", "2"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert f"error: cannot write {run / 'checkpoints' / 'last.ckpt'}: " in err and "Traceback" not in err, err
    assert _contents(run / "checkpoints") == before
