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


def test_ctrl_c_says_interrupted(capsys, monkeypatch):
    """Ctrl-C raises a KeyboardInterrupt without text: the user reads 'interrupted', exit status 130."""
    import domainmae.cli as cli

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_models", interrupted)
    assert main(["models"]) == 130
    assert capsys.readouterr().err.strip() == "domainmae models: interrupted"


def test_an_override_that_is_not_yaml_names_itself(capsys):
    assert main(["pretrain", "--recipe", "cellpainting", "--set", "data.channels=[DNA, PH3"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "override 'data.channels=[DNA, PH3'" in err and "not valid YAML" in err
