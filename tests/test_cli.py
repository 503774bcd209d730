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


def test_a_half_set_launcher_environment_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    # WORLD_SIZE without the rest of torchrun's variables (a stale export): the run stops with the reason,
    # no traceback and no run directory.
    monkeypatch.setenv("WORLD_SIZE", "2")
    for name in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    run_dir = tmp_path / "run"
    assert main(["train", "trainer.device=cpu", f"trainer.default_local_dir={run_dir}"]) == 2
    err = capsys.readouterr().err
    assert (
        "WORLD_SIZE=2 is set but RANK, MASTER_ADDR, MASTER_PORT is not" in err.replace("\n", " ")
        and "Traceback" not in err
    )
    assert not run_dir.exists()
