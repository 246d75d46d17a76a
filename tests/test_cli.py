import subprocess
import sys

import pytest

from domainmae.cli import main


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for command in ("pretrain", "embed", "reconstruct", "recipes", "models"):
        assert command in text


def test_unknown_arguments_are_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["models", "--bogus"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_models_lists_sizes(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "vit_base" in out and "768" in out


def test_module_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "domainmae", "models"], capture_output=True, text=True)
    assert result.returncode == 0 and "vit_small" in result.stdout
