"""The README's Python tour runs as written, and its opening commands are the ones CI uses."""
from pathlib import Path

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


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
