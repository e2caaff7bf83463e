"""`vision-ensemble`: the console script pyproject declares, its help (a line per command, in data-flow order,
without torch), each command's --help the entry point's own, and its mistakes as one line with a non-zero exit."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import ENV, REPO

CLI = [sys.executable, "-m", "vision_ensemble.cli"]
COMMANDS = ["label", "check", "train", "sweep", "evaluate", "predict", "thresholds", "export", "push", "serve"]
# Each command as its entry point runs on its own, and the name its usage line gives it there.
ENTRY_POINTS = {"label": ["-m", "vision_ensemble.labeler"], "check": ["-m", "vision_ensemble.datacheck"],
                "train": ["train/finetune.py"], "sweep": ["-m", "vision_ensemble.sweep"],
                "evaluate": ["evaluation/evaluate.py"], "predict": ["-m", "vision_ensemble.serving.batch"],
                "thresholds": ["evaluation/thresholds.py"],
                "export": ["-m", "vision_ensemble.onnx_export"], "serve": ["app.py"]}
WIDE = {"COLUMNS": "10000"}  # no wrapping: the two helps differ in the program's name only, not where lines break


def cli(*args: str, **extra_env: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], env={**ENV, **extra_env}, cwd=REPO, capture_output=True, text=True,
                          timeout=300, check=False)


def test_pyproject_declares_the_console_script():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"vision-ensemble": "vision_ensemble.cli:main"}


def test_help_lists_every_command_in_data_flow_order_without_torch():
    result = cli("--help")
    assert result.returncode == 0, result.stderr
    lines = [line.split(maxsplit=1) for line in result.stdout.splitlines() if line.startswith("  ")]
    assert [name for name, _ in lines] == COMMANDS
    assert all(summary.strip() for _, summary in lines)
    loaded = subprocess.run([sys.executable, "-c", "import sys, vision_ensemble.cli as c; c.usage(); "
                             "print(sorted({'torch', 'numpy', 'accelerate', 'timm'} & set(sys.modules)))"],
                            env=ENV, cwd=REPO, capture_output=True, text=True, timeout=60, check=True)
    assert loaded.stdout.strip() == "[]"


@pytest.mark.slow  # two interpreters importing torch per command
@pytest.mark.parametrize("command", ENTRY_POINTS)
def test_each_commands_help_is_its_entry_points_own(command):
    own = subprocess.run([sys.executable, *ENTRY_POINTS[command], "--help"], env={**ENV, **WIDE}, cwd=REPO,
                         capture_output=True, text=True, timeout=300, check=True).stdout
    result = cli(command, "--help", **WIDE)
    assert result.returncode == 0, result.stderr
    script = ENTRY_POINTS[command][0]
    if script != "-m":  # a script names itself by its file; a module's parser names itself
        assert result.stdout.startswith(f"usage: vision-ensemble {command} ")
        own = own.replace(f"usage: {script.rpartition('/')[2]} ", f"usage: vision-ensemble {command} ", 1)
    assert result.stdout == own


def test_push_takes_a_folder_and_a_repo_and_refuses_a_missing_folder(tmp_path):
    result = cli("push", "--help")
    assert result.returncode == 0 and "usage: vision-ensemble push [-h] [--private] folder repo_id" in result.stdout
    result = cli("push", str(tmp_path / "missing"), "someone/model")
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {tmp_path / 'missing'} is not a model folder (no config.json in it)"


def test_an_unknown_command_is_one_line_and_non_zero():
    result = cli("predictt", "photo.jpg")
    assert result.returncode == 2
    assert result.stderr.strip() == ("vision-ensemble: error: unknown command 'predictt'; choose from "
                                     + ", ".join(COMMANDS))


def test_train_with_launcher_options_says_how_to_launch_several_processes():
    result = cli("train", "--model", "test_resnet", "--num_processes", "2", "--multi_gpu", "--epochs", "1")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "vision-ensemble: error: --num_processes 2 --multi_gpu: options of accelerate launch, and `vision-ensemble "
        "train` trains in this one process; for several, run: accelerate launch --num_processes 2 --multi_gpu -m "
        "vision_ensemble.cli train --model test_resnet --epochs 1"]
