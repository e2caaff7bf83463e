"""train/fp16_members.py: a member whose fp16 weights classify the test split as its fp32 ones do is halved in
place and its card says so; one whose test accuracy changes in fp16 keeps its fp32 file, byte for byte; by default
the small tensors (at most 65,536 elements) stay fp32."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from conftest import ENV, REPO, make_image_folder, make_member

CLASSES = ("circle", "square", "stripes")


def dtypes(folder) -> set[str]:
    with safe_open(folder / "model.safetensors", "pt") as f:
        return {str(f.get_tensor(name).dtype) for name in f.keys()}


def run_script(*args) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "train/fp16_members.py", *map(str, args)],
                            env=ENV, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_fp16_only_where_the_test_accuracy_stays(tmp_path):
    data = make_image_folder(tmp_path / "shapes", classes=CLASSES, per_class=8)
    same = make_member(tmp_path / "same", 0, 32, classes=CLASSES, sharpen=5.0)
    changed = make_member(tmp_path / "changed", 0, 32, classes=CLASSES, sharpen=3.0)
    # Class biases offset by ~1000, where fp16 steps by 0.5: rounded, they move by +-0.24, as much as the logits
    # differ between classes, and some test images change class (finite weights, a changed accuracy).
    weights = load_file(changed / "model.safetensors")
    weights["fc.bias"] = weights["fc.bias"] + torch.tensor([1000.26, 1000.0, 999.74])
    save_file(weights, changed / "model.safetensors", metadata={"format": "pt"})
    fp32_bytes = {m: (m / "model.safetensors").read_bytes() for m in (same, changed)}
    # `same` as train/finetune.py exports a member: its training record beside the weights, from which its card is
    # written again; `changed` has none, so its card is left alone.
    (same / "metrics.json").write_text(json.dumps({"epoch": 3, "val_top1": 91.5, "val_top5": 100.0}))
    (same / "training_args.json").write_text(json.dumps({"model": "test_resnet", "img_size": 32, "epochs": 3,
                                                         "seed": 0, "split_seed": 0, "data_dir": str(data)}))

    shutil.copytree(changed, tmp_path / "changed-default")  # before either run: for the default rule below

    # Every tensor in fp16 (--fp32-max-elements 0): the offset biases change some test images' class.
    result = run_script(same, changed, "--data-dir", data, "--fp32-max-elements", 0)
    lines = {}  # what was printed for each member folder
    for line in result.stdout.splitlines():
        if line.startswith(str(tmp_path)):
            lines[line.split(":")[0]] = lines.get(line.split(":")[0], "") + line + "\n"
    assert "-> fp16 weights" in lines[str(same)] and "0 of 24 test images changed" in lines[str(same)]
    assert dtypes(same) == {"torch.float16", "torch.int64"}  # BatchNorm's num_batches_tracked stays an int
    assert (same / "model.safetensors").stat().st_size < 0.6 * len(fp32_bytes[same])
    assert "-> fp32 weights" in lines[str(changed)] and "0 of 24" not in lines[str(changed)]
    assert (changed / "model.safetensors").read_bytes() == fp32_bytes[changed]
    card = (same / "README.md").read_text()
    assert "Its weights are stored in fp16" in card and "--seed 0 --split-seed 0" in card
    assert not (changed / "README.md").exists() and "its card is left as it is" in lines[str(changed)]

    # Run again: the member now in fp16 is left as it is, its card written again with what it said of its weights.
    (same / "README.md").write_text((same / "README.md").read_text().replace("--seed 0", "--seed 7"))
    fp16_bytes = (same / "model.safetensors").read_bytes()
    again = run_script(same, "--data-dir", data)
    assert "large tensors already fp16; left as they are" in again.stdout
    assert (same / "model.safetensors").read_bytes() == fp16_bytes
    card_again = (same / "README.md").read_text()
    assert "--seed 0 --split-seed 0" in card_again  # written again, from training_args.json
    assert "Its weights are stored in fp16: with them its flip-TTA test top-1 is the fp32 weights'" in card_again

    # The default rule: tensors of at most 65,536 elements (here the biases, the norms and all but layer4's two
    # convolutions) stay fp32, so the offset biases are exact and the same member is halved where it was not.
    default = tmp_path / "changed-default"
    fp32_size = (default / "model.safetensors").stat().st_size
    result = run_script(default, "--data-dir", data)
    assert "-> fp16 weights" in result.stdout and "0 of 24 test images changed" in result.stdout, result.stdout
    with safe_open(default / "model.safetensors", "pt") as f:
        stored = {name: f.get_tensor(name) for name in f.keys()}
    halved = {k for k, v in stored.items() if v.dtype == torch.float16}
    assert halved == {"layer4.0.conv1.weight", "layer4.0.conv2.weight"}
    assert stored["fc.bias"].dtype == torch.float32
    assert (default / "model.safetensors").stat().st_size < 0.7 * fp32_size  # the two hold two thirds of the bytes

    # A threshold above every tensor: nothing to halve, the fp32 file stays byte for byte.
    result = run_script(changed, "--data-dir", data, "--fp32-max-elements", 10**9)
    assert "no tensor of more than 1,000,000,000 elements; fp32 weights kept" in result.stdout, result.stdout
    assert (changed / "model.safetensors").read_bytes() == fp32_bytes[changed]
    # ...and a member already in fp16 is not called fp32 for having no tensor above the threshold.
    result = run_script(same, "--data-dir", data, "--fp32-max-elements", 10**9)
    assert "large tensors already fp16; left as they are" in result.stdout, result.stdout
    assert (same / "model.safetensors").read_bytes() == fp16_bytes
