"""benchmarks/gpu_session.sh: the CPU dry run of `all` (the same steps as on the GPU, tiny settings) returns every
file the GPU session must bring back, within the device tool's limits, and `ensemble` builds the report from them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile

import pytest

from conftest import ENV, REPO

SCRIPT = REPO / "benchmarks" / "gpu_session.sh"
MODELS = ("seresnet50", "efficientnet_b0", "vit_small_patch16_224")
MEMBER_FILES = {"metrics.jsonl", "training_curves.png", "predictions.npz", "summary.json", "training_args.json",
                "train.log", "best/config.json", "best/metrics.json"}


def dry_run_env(cifar10_archive, cache_root, tmp_path) -> dict:
    """The script's environment for a CPU dry run in tmp_path: the venv's Python as python3, files back in
    tmp_path/out, runs in tmp_path/runs, the 64 px cache built (shared with the other tests' 32 px runs)."""
    from vision_ensemble.data import prepare_cache

    prepare_cache(cifar10_archive, cache_root, 64)
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "python3").write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    (shim / "python3").chmod(0o755)
    return {**ENV, "PATH": f"{shim}:{os.environ['PATH']}", "OUT": str(tmp_path / "out"),
            "RUNS": str(tmp_path / "runs"), "GPU_SESSION_CPU": "1", "DATA": str(cifar10_archive),
            "VISION_ENSEMBLE_CACHE": str(cache_root), "SITE": str(tmp_path / "site")}


@pytest.mark.slow
def test_cpu_dry_run_of_all_returns_every_file_and_the_ensemble_builds(cifar10_archive, cache_root, tmp_path):
    out = tmp_path / "out"
    env = {**dry_run_env(cifar10_archive, cache_root, tmp_path),
           "MEMBERS_END_S": "0", "STUDENT_END_S": "0"}  # every run gets the CPU minimum, MIN_LIMIT_MIN
    result = subprocess.run(["bash", str(SCRIPT), "all"], env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]

    # The device tool's limits: at most 8 files, 16 MiB each, 64 MiB in all, no deeper than OUT/a/b/file.
    returned = [p for p in out.rglob("*") if p.is_file()]
    assert {p.name for p in returned} == {"session.log", "throughput.jsonl", "student.tar.gz",
                                          *(f"{m}.tar.gz" for m in MODELS)}
    assert len(returned) <= 8 and sum(p.stat().st_size for p in returned) <= 64 * 2**20
    assert all(p.stat().st_size <= 16 * 2**20 and len(p.relative_to(out).parts) <= 3 for p in returned)

    log = (out / "session.log").read_text()
    assert "timm 1.0.31" in log and "step members" in log and "done:" in log
    assert [json.loads(line)["model"] for line in (out / "throughput.jsonl").read_text().splitlines()] == list(MODELS)
    for model in MODELS:
        with tarfile.open(out / f"{model}.tar.gz") as archive:
            assert {name.removeprefix(f"{model}/") for name in archive.getnames()} == MEMBER_FILES
            summary = json.load(archive.extractfile(f"{model}/summary.json"))
        # Three trainings on 2 CPU cores time each other's epochs unevenly, so the guard may end one an epoch or
        # two before its count (it says so in train.log); test_time_limit.py checks the schedule's end alone.
        assert summary["model"] == model and 1 <= summary["epochs"] <= summary["planned_epochs"]
        assert summary["time_limit_min"] == 0.25 and summary["mean_images_per_s"] > 0
        assert f"{model}: exit 0" in log
    assert "student: exit 0" in log and "from 3 teacher(s)" in log
    with tarfile.open(out / "student.tar.gz") as archive:
        assert {name.removeprefix("student/") for name in archive.getnames()} == {
            *MEMBER_FILES, "best/model.safetensors", "best/README.md"}

    # Back on CPU: the report from the returned files alone.
    results, unpacked = tmp_path / "results", tmp_path / "unpacked"
    unpacked.mkdir()
    env = {**env, "RUNS": str(unpacked), "RESULTS": str(results)}
    result = subprocess.run(["bash", str(SCRIPT), "ensemble", str(out)], env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    report = json.loads((results / "report.json").read_text())
    assert len(report["members"]) == 3 and (results / "throughput.jsonl").exists()
    assert all((results / model / "summary.json").exists() for model in MODELS)
    assert "student" in report  # beside the ensemble, and its folder is the one the Space serves
    from vision_ensemble.evaluation.ensemble import Ensemble
    served = Ensemble.from_manifest(results / "student" / "ensemble.json")
    assert [m.source for m in served.members] == ["model"] and served.class_names == report["class_names"]


@pytest.mark.slow
def test_cpu_dry_run_of_variants_packs_each_run_as_it_ends(cifar10_archive, cache_root, tmp_path):
    """`variants`, the A/B for the minutes after `all`: each "NAME OPTIONS" trains into its own run and comes back
    as NAME.tar.gz."""
    out, env = tmp_path / "out", dry_run_env(cifar10_archive, cache_root, tmp_path)
    specs = ["sgd --model airbench_s --epochs 1", "muon --model airbench_s --epochs 1 --opt nmuon --lr 0.02"]
    result = subprocess.run(["bash", str(SCRIPT), "variants", *specs], env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert {p.name for p in out.iterdir()} == {"session.log", "sgd.tar.gz", "muon.tar.gz"}
    for name, opt in (("sgd", "sgd"), ("muon", "nmuon")):
        with tarfile.open(out / f"{name}.tar.gz") as archive:
            assert {n.removeprefix(f"{name}/") for n in archive.getnames()} == MEMBER_FILES
            assert json.load(archive.extractfile(f"{name}/training_args.json"))["opt"] == opt
        assert f"{name}: exit 0" in (out / "session.log").read_text()


def test_variants_refuse_what_could_not_run_before_anything_runs(tmp_path):
    env = {**ENV, "OUT": str(tmp_path / "out"), "RUNS": str(tmp_path / "runs"), "GPU_SESSION_CPU": "1"}

    def variants(*specs):
        return subprocess.run(["bash", str(SCRIPT), "variants", *specs], env=env, capture_output=True, text=True,
                              timeout=60)

    too_many = variants(*[f"v{i} --epochs 1" for i in range(8)])
    assert too_many.returncode == 2 and "1 to 7" in too_many.stderr
    no_options = variants("sgd --model airbench_s --epochs 1", "s24")
    assert no_options.returncode == 2 and "'s24' has no options" in no_options.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").glob("*.tar.gz"))


def test_the_checkout_fits_the_device_call_with_its_data_and_wheel(cifar10_archive):
    """The device call carries the checkout's tracked files, the archive copied to .data and timm's wheel in .whl
    (BENCHMARKS.md "Before the call"), 64 MiB at most: shipped weights that grow past it (airbench96 in fp32 did)
    would have the call refused on the day a GPU is lent."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    sizes = {name: (REPO / name).stat().st_size for name in listed.decode().split("\0")
             if name and (REPO / name).is_file()}
    timm_wheel = 3 * 2**20  # timm 1.0.31's wheel is 2.8 MB
    total = sum(sizes.values()) + cifar10_archive.stat().st_size + timm_wheel
    largest = sorted(sizes, key=sizes.get, reverse=True)[:3]
    assert total <= 64 * 2**20, (f"{total / 2**20:.1f} MiB would travel; the largest tracked files: "
                                 + ", ".join(f"{name} ({sizes[name] / 2**20:.1f} MiB)" for name in largest))
