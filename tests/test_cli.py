import subprocess
import sys

from sapo import __version__
from sapo.cli import COMMANDS, main


def test_help_lists_every_implemented_command(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "usage: sapo" in out
    for name in COMMANDS:
        assert name in out


def test_version_flag_runs_as_a_console_module():
    proc = subprocess.run(
        [sys.executable, "-m", "sapo.cli", "--version"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0
    assert __version__ in proc.stdout
