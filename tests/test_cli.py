"""The command line as a user meets it: help everywhere, clear errors, no tracebacks."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pipelines.cli import available_commands, main

EXPECTED_COMMANDS = {"synth", "extract", "link", "evaluate", "demo", "run", "person", "export",
                     "decide"}


def test_every_documented_command_is_installed():
    assert EXPECTED_COMMANDS <= set(available_commands())


def test_top_level_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in EXPECTED_COMMANDS:
        assert command in out


@pytest.mark.parametrize("command", sorted(available_commands()))
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: reglink {command}" in out


def test_console_script_runs():
    """The installed entry point works, not only the function."""
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "--version"],
        capture_output=True, text=True, check=False,
    )
    assert done.returncode == 0
    assert done.stdout.startswith("reglink ")


def test_link_without_extracts_is_a_clear_error(tmp_path, capsys):
    status = main(["link", "--data-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert status == 2
    assert "reglink extract" in err
    assert "Traceback" not in err
