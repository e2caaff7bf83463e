"""train/cifar10_cpu.sh: the launch command each member name and setting builds (PY is a stand-in that records its
arguments, so no training runs)."""

from __future__ import annotations

import os
import subprocess

from conftest import REPO

SCRIPT = REPO / "train" / "cifar10_cpu.sh"


def launch(tmp_path, name: str, **env: str) -> subprocess.CompletedProcess:
    recorder = tmp_path / "python"
    recorder.write_text('#!/bin/sh\necho "$@" >> "$(dirname "$0")/argv"\n')
    recorder.chmod(0o755)
    return subprocess.run(["bash", str(SCRIPT), "members", name], capture_output=True, text=True,
                          env={**os.environ, "PY": str(recorder), "RUNS": str(tmp_path / "runs"), **env})


def test_a_member_trains_for_minutes_unless_its_schedule_is_fixed_and_then_it_may_pause(tmp_path):
    assert launch(tmp_path, "airbench_s-cutout-seed3", MINUTES="90").returncode == 0
    assert launch(tmp_path, "airbench95-seed7", EPOCHS="16", STOP_AFTER_EPOCH="11").returncode == 0
    (tmp_path / "runs" / "airbench95-seed7" / "checkpoints").mkdir(parents=True)  # the paused run's
    assert launch(tmp_path, "airbench95-seed7", EPOCHS="16").returncode == 0
    assert launch(tmp_path, "airbench95-seed8", MINUTES="60").returncode == 0
    assert launch(tmp_path, "airbench96-seed9", MINUTES="60").returncode == 0
    timed, paused, resumed, recipes, widest = (line.split() for line in (tmp_path / "argv").read_text().splitlines())
    assert timed[timed.index("--model") + 1] == "airbench_s" and timed[timed.index("--time-limit") + 1] == "90"
    assert timed[timed.index("--cutout") + 1] == "12" and "--epochs" not in timed
    assert paused[paused.index("--model") + 1] == "airbench95" and paused[paused.index("--seed") + 1] == "7"
    assert paused[paused.index("--epochs") + 1] == "16" and paused[paused.index("--stop-after-epoch") + 1] == "11"
    assert "--time-limit" not in paused and "--resume" not in paused
    assert resumed[resumed.index("--resume") + 1] == "latest" and "--stop-after-epoch" not in resumed
    assert "--time-limit" not in recipes and "--epochs" not in recipes  # airbench95's recipe: its own 16 epochs
    assert widest[widest.index("--model") + 1] == "airbench96" and "--time-limit" not in widest  # and airbench96's


def test_a_member_name_the_script_does_not_know_is_refused_with_an_example(tmp_path):
    result = launch(tmp_path, "resnet18-seed0")
    assert result.returncode == 2 and "e.g. airbench_s-cutout-seed3" in result.stderr
    assert not (tmp_path / "argv").exists()
