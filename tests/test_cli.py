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


def test_train_under_a_multi_process_launcher_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    # torchrun sets WORLD_SIZE; until multi-process training lands every rank would train a full copy
    # into the same run directory, so the run stops with the reason, no traceback and no run directory.
    monkeypatch.setenv("WORLD_SIZE", "2")
    run_dir = tmp_path / "run"
    assert main(["train", f"trainer.default_local_dir={run_dir}"]) == 2
    err = capsys.readouterr().err
    assert "2 processes: sapo train runs as one process for now" in err and "Traceback" not in err
    assert not run_dir.exists()
