"""Halve members' weights to fp16 where the test accuracy stays the same (issue 30: ship fp16 safetensors only if
their test accuracy equals the fp32 weights').

Only the large tensors are halved (more than `--fp32-max-elements`, 65,536 by default: the convolutions and linear
layers that hold nearly all the bytes); the small ones stay fp32 (normalization statistics, biases, a whitening
stem, a small head: 0.4% of airbench96's parameters; all-fp16 airbench96 changes 8 test images' class, this rule
none).  For each member folder: its flip-TTA top class on every test image with the fp32 weights, then with the
halved ones (loaded back into the fp32 network, as timm loads them); the folder keeps the halved model.safetensors
(about half the bytes) when the test top-1 is the same, else its fp32 file is written back (kept at once when a
weight is beyond fp16's range).  Its card (README.md) is written again to say which, and why (a member already
halved keeps what its card said of it).
Prints, per member, both accuracies and how many test images changed their top class.

    python train/fp16_members.py models/cifar10/airbench_s-seed2 models/cifar10/airbench96-seed10 \\
        --data-dir ../shared/data/cifar10.tar.gz
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vision_ensemble.config import CIFAR10_NAME, models_cache_size  # noqa: E402
from vision_ensemble.data import load_dataset  # noqa: E402
from vision_ensemble.hub import member_card  # noqa: E402
from vision_ensemble.model import Member  # noqa: E402

WEIGHTS = "model.safetensors"
FP32_MAX_ELEMENTS = 65_536  # tensors this small stay fp32: measured on airbench96 (the docstring)


def test_top_classes(member: Member, images: torch.Tensor, batch_size: int) -> np.ndarray:
    return member.probabilities(images, tta_flip=True, batch_size=batch_size).argmax(1).numpy()


def write_weights(path: Path, tensors: dict[str, torch.Tensor], metadata: dict | None) -> None:
    partial = path.with_name(path.name + ".partial")
    save_file(tensors, partial, metadata=metadata)
    os.replace(partial, path)  # never a half-written weights file


def write_card(folder: Path, member: Member, note: str) -> bool:
    """The member's README.md again, from its folder's metrics.json and training_args.json (train/finetune.py's
    export writes both), with `note` on its weights; False, and the card left alone, without them."""
    if not ((folder / "metrics.json").is_file() and member.training_args.get("model")):
        return False
    metrics = json.loads((folder / "metrics.json").read_text())
    card = member_card(member.training_args["model"], metrics, member.training_args, member.class_names, note)
    (folder / "README.md").write_text(card)
    return True


def stored_in_fp32(tensors: dict[str, torch.Tensor], halved: set[str]) -> str:
    """What the card adds to "Its weights are stored in fp16" when some floating-point tensors stay fp32."""
    kept = [v for k, v in tensors.items() if v.is_floating_point() and k not in halved]
    if not kept:
        return ""
    share = 100 * sum(v.numel() for v in kept) / sum(v.numel() for v in tensors.values() if v.is_floating_point())
    return f" but for its {len(kept)} smallest tensors, {share:.1f}% of the parameters, in fp32"


def earlier_weights_note(folder: Path) -> str:
    """The sentence on the weights that an earlier run of this script wrote in the member's card ("Its weights are
    stored in fp16: ..."), or a plain one: a member already in fp16 has no fp32 weights left to check again."""
    card = folder / "README.md"
    found = re.search(r"Its weights are stored in fp16.*?\)\.", card.read_text()) if card.is_file() else None
    return found.group(0) if found else "Its weights are stored in fp16."


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("members", nargs="+", type=Path, help="member folders in timm's format (rewritten in place)")
    p.add_argument("--data-dir", default=CIFAR10_NAME, help="the dataset whose test split decides")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--fp32-max-elements", type=int, default=FP32_MAX_ELEMENTS,
                   help="tensors of at most this many elements stay fp32 (0: every floating-point tensor in fp16)")
    args = p.parse_args(argv)

    members = [Member.load(str(folder), device="cpu") for folder in args.members]  # before any file is rewritten
    test = load_dataset(args.data_dir, cache_size=models_cache_size(m.data_config for m in members)).test
    if test is None:
        p.error(f"{args.data_dir} has no test split")
    images = torch.from_numpy(test.gather(np.arange(len(test)))).permute(0, 3, 1, 2)
    labels = test.labels
    for folder, member in zip(args.members, members):
        path = folder / WEIGHTS
        with safe_open(path, "pt") as f:
            metadata, fp32 = f.metadata(), {name: f.get_tensor(name) for name in f.keys()}
        floating = {k for k, v in fp32.items() if v.is_floating_point()}
        large = {k for k in floating if fp32[k].numel() > args.fp32_max_elements}
        if any(fp32[k].dtype != torch.float32 for k in floating) and all(fp32[k].dtype != torch.float32 for k in large):
            print(f"{folder}: large tensors already fp16; left as they are")
            write_card(folder, member, earlier_weights_note(folder))  # its card still follows the current template
            continue
        if not large:
            print(f"{folder}: no tensor of more than {args.fp32_max_elements:,} elements; fp32 weights kept")
            write_card(folder, member, f"Its weights are stored in fp32: no tensor has more than "
                                       f"{args.fp32_max_elements:,} elements, the least this project halves.")
            continue
        halved = {k: v.half() if k in large else v for k, v in fp32.items()}
        if overflow := [k for k, v in halved.items() if v.is_floating_point() and not v.isfinite().all()]:
            print(f"{folder}: {', '.join(overflow)} outside fp16's range; fp32 weights kept")
            write_card(folder, member, f"Its weights are stored in fp32: {', '.join(overflow)} lie outside fp16's "
                                       "range.")
            continue
        before = test_top_classes(member, images, args.batch_size)
        write_weights(path, halved, metadata)
        after = test_top_classes(Member.load(str(folder), device="cpu"), images, args.batch_size)
        top1_32, top1_16 = (100 * float((top == labels).mean()) for top in (before, after))
        kept = top1_16 == top1_32
        if not kept:
            write_weights(path, fp32, metadata)
        changed = int((before != after).sum())
        print(f"{folder}: test top-1 fp32 {top1_32:.2f}%, fp16 {top1_16:.2f}%, {changed} of "
              f"{len(labels):,} test images changed class -> {'fp16' if kept else 'fp32'} weights "
              f"({path.stat().st_size / 2**20:.1f} MiB)")
        carded = write_card(folder, member, (
            f"Its weights are stored in fp16{stored_in_fp32(fp32, large)}: with them its flip-TTA test top-1 is the "
            f"fp32 weights' ({top1_32:.2f}%; {changed} of {len(labels):,} test images change class)." if kept else
            f"Its weights are stored in fp32: rounded to fp16 they move its flip-TTA test top-1 from {top1_32:.2f}% "
            f"to {top1_16:.2f}% ({changed} of {len(labels):,} test images change class)."))
        if not carded:
            print(f"{folder}: no metrics.json / training_args.json (not exported by train/finetune.py): its card is "
                  "left as it is")
    return 0


if __name__ == "__main__":
    sys.exit(main())
