"""The README runs as written: its Python tour, its walkthrough on the bundled samples, and its opening
commands are the ones CI uses; every other command is marked as needing the user's own data."""
import json
import shlex
from pathlib import Path

import pytest

from domainmae.cli import main

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_python_tour_runs():
    code = README.split("## A short tour", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    scope: dict = {}
    exec(compile(code, "README.md tour", "exec"), scope)
    assert scope["emb"].shape == (4, 192)
    assert set(scope["out"].losses) == {"s2", "s1"}


def test_opening_commands_match_ci():
    opening = README.split("```bash", 1)[1].split("```", 1)[0].strip().splitlines()
    assert opening[0].startswith('pip install -e ".[dev]" && domainmae pretrain --recipe')
    ci = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()
    assert 'pip install -e ".[dev]"' in ci and opening[1] in ci


def _bash_block(heading: str) -> list[str]:
    """The command lines of the first bash block under ``heading``, trailing comments dropped."""
    block = README.split(heading, 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    lines = [shlex.split(line, comments=True) for line in block.strip().splitlines()]
    return [" ".join(shlex.quote(word) for word in words) for words in lines if words]


def test_every_readme_command_is_either_in_the_walkthrough_or_marked_as_needing_your_data():
    sections = README.split("\n## ")
    for section in sections:
        if "```bash" not in section or section.startswith(("Walkthrough", "On your own data")):
            continue
        # Only the opening (install + demo, tests) may stand outside those two sections.
        assert section is sections[0], f"bash commands under '## {section.splitlines()[0]}' are in neither section"
    assert _bash_block("## On your own data")


@pytest.mark.slow
def test_walkthrough_runs_as_written(tmp_path, monkeypatch):
    """Each walkthrough line, in order, in an empty folder, as from a wheel install: sample paths name the
    samples installed with the package (they were looked up in the folder, which a wheel user does not have)."""
    monkeypatch.chdir(tmp_path)
    lines = _bash_block("## Walkthrough on the bundled samples")
    assert len(lines) >= 12
    for line in lines:
        words = shlex.split(line)
        assert words[0] == "domainmae", line
        assert main([*words[1:], *(["--quiet"] if words[1] in ("pretrain", "embed") else [])]) == 0, line
    for made in ("runs/fly/checkpoints/last.ckpt", "recon.png", "fly.parquet", "fly_profiles.parquet",
                 "fly-model/model.safetensors", "human.parquet", "chips.parquet", "runs/rgbn/checkpoints/last.ckpt"):
        assert (tmp_path / made).exists(), made
    assert len(list((tmp_path / "emb_rasters").glob("*.tif"))) == 6
    assert json.loads((tmp_path / "runs/fly/metrics.jsonl").read_text().splitlines()[-1])["step"] == 20
