"""Several machines, simulated on localhost: two torchrun "nodes" of two gloo processes each, with node-local
folders (each its own cache and run folder) and with one shared folder; interrupted in epoch 2, resumed, and
compared with an uninterrupted run.  And launches that would silently train as separate runs are refused."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import ENV, FINETUNE, REPO, free_port, make_image_folder, make_member, run, run_in_process

EVALUATE = str(REPO / "evaluation" / "evaluate.py")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("shapes"), per_class=32, size=(32, 32), fmt="png")


def train_on_two_nodes(data, node_dirs, *extra):
    """Both nodes' torchrun, each with its (cache, run folder); their (returncode, output) once both end."""
    port = free_port()
    nodes = []
    for rank, (cache, out) in enumerate(node_dirs):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(rank),
               "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(port), FINETUNE,
               "--model", "test_resnet", "--img-size", "32", "--batch-size", "8", "--epochs", "2", "--lr", "3e-3",
               "--data-dir", str(data), "--val-size", "0.25", "--output-dir", str(out), *extra]
        nodes.append(subprocess.Popen(cmd, env={**ENV, "VISION_ENSEMBLE_CACHE": str(cache)}, cwd=REPO, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    return [(node.wait(timeout=600), node.stdout.read()) for node in nodes]


def layout(root, shared: bool):
    return [(root / "cache", root / "run")] * 2 if shared else [(root / f"node{r}" / "cache", root / f"node{r}" / "run")
                                                                for r in range(2)]


@pytest.fixture(scope="module")
def uninterrupted(shapes, tmp_path_factory):
    nodes = layout(tmp_path_factory.mktemp("full"), shared=True)
    for code, output in train_on_two_nodes(shapes, nodes):
        assert code == 0, output[-3000:]
    return nodes[0][1]


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("shared", [False, True], ids=["node-local", "shared"])
def test_two_nodes_interrupted_in_epoch_2_resume_to_the_uninterrupted_result(shapes, uninterrupted, tmp_path, shared):
    nodes = layout(tmp_path, shared)
    # Every process stops with an error in the middle of epoch 2 (the test hook's NaN loss), as after a crash.
    for code, output in train_on_two_nodes(shapes, nodes, "--fail-at-epoch", "2"):
        assert code != 0 and "loss became nan in epoch 2" in output
    assert "4 process(es)" in output
    assert ("shared by the nodes" if shared else "on each node (checkpoints saved on each)") in output
    runs = sorted({out for _, out in nodes})
    for out in runs:  # each node has the epoch-1 checkpoint it resumes from, with its own processes' RNG states
        assert (out / "checkpoints" / "epoch_001" / "model.safetensors").exists()
        assert not (out / "checkpoints" / "epoch_002").exists()
    assert {p.name for p in runs[-1].glob("checkpoints/epoch_001/random_states_*.pkl")} == \
        ({f"random_states_{i}.pkl" for i in range(4)} if shared else {"random_states_2.pkl", "random_states_3.pkl"})
    if not shared:  # a node that lost its copy: one clear line on every node, no hang
        shutil.move(runs[1] / "checkpoints", tmp_path / "aside")
        for code, output in train_on_two_nodes(shapes, nodes, "--resume", "latest"):
            assert code != 0 and "error: --resume latest: no checkpoint found" in output
            assert "on the node(s) of process(es) [2, 3]" in output
        shutil.move(tmp_path / "aside", runs[1] / "checkpoints")

    for code, output in train_on_two_nodes(shapes, nodes, "--resume", "latest"):
        assert code == 0, output[-3000:]
    assert "resumed from" in output
    full = load_file(uninterrupted / "checkpoints" / "epoch_002" / "model.safetensors")
    for out in runs:
        resumed = load_file(out / "checkpoints" / "epoch_002" / "model.safetensors")
        assert resumed.keys() == full.keys()
        for key in full:
            torch.testing.assert_close(resumed[key], full[key], rtol=1e-5, atol=1e-6, msg=key)
        assert (out / "best" / "model.safetensors").exists()
    for got, want in zip(metrics(runs[0]), metrics(uninterrupted), strict=True):
        for key in ("epoch", "train_loss", "val_loss", "val_top1", "val_count"):
            assert got[key] == pytest.approx(want[key], rel=1e-5), key


@pytest.mark.slow
def test_a_launch_that_would_run_separate_trainings_is_refused(shapes, tmp_path):
    """`accelerate launch --cpu --num_processes 2` starts one plain process: training it would look like success."""
    result = run([sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2",
                  "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", FINETUNE,
                  "--model", "test_resnet", "--data-dir", str(shapes), "--output-dir", str(tmp_path / "run")],
                 check=False)
    assert result.returncode != 0  # the launcher turns the script's 2 into its own 1
    assert "error: launched for several processes or machines, but this process trains alone" in result.stderr
    assert "--multi_gpu --num_processes N" in result.stderr
    assert 'finetune.py", line' not in result.stderr  # one line from the script (the launcher adds its own traceback)
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow
def test_evaluation_sharded_over_two_processes_reports_as_one(shapes, tmp_path):
    """Batches of 7 leave uneven last shards (Accelerate pads them; gather_for_metrics must drop the padding)."""
    classes = ("circle", "square", "stripes")
    members = [str(make_member(tmp_path / name, seed, 32, classes, sharpen=3.0)) for seed, name in enumerate("ab")]
    args = ["--models", *members, "--data-dir", str(shapes), "--val-size", "0.25",
            "--cache-dir", str(tmp_path / "cache"), "--batch-size", "7", "--tta"]
    run_in_process(EVALUATE, *args, "--output-dir", str(tmp_path / "one"))
    two = run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--mixed_precision", "no", "--dynamo_backend", "no", EVALUATE, *args,
               "--output-dir", str(tmp_path / "two")])
    assert two.stdout.count("wrote report.json") == 1  # the main process reports
    one, two = (json.loads((tmp_path / name / "report.json").read_text()) for name in ("one", "two"))
    for report in (one, two):
        report.pop("command", None), report.pop("inference_s", None)
    assert (two["val_images"], two["test_images"]) == (24, 96)
    # The same report up to float32 rounding: a member's convolutions sum in another order for another batch.
    one, two = leaves(one), leaves(two)
    assert one.keys() == two.keys()
    for key, value in one.items():
        assert two[key] == (pytest.approx(value, rel=1e-5, abs=1e-7) if isinstance(value, float) else value), key


def leaves(tree, path="") -> dict:
    """{"a.b.0": leaf} of a JSON tree."""
    if isinstance(tree, dict | list):
        items = tree.items() if isinstance(tree, dict) else enumerate(tree)
        return {k: v for key, child in items for k, v in leaves(child, f"{path}.{key}" if path else str(key)).items()}
    return {path: tree}
