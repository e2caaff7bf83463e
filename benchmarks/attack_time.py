"""Time of `evaluate.py --diagnose`'s FGSM/PGD evaluation: each member and the ensemble, on CPU.

    python benchmarks/attack_time.py --data-dir ../shared/data/cifar10.tar.gz --samples 32 --pgd-steps 3 --tta

By default it builds the members tests/test_diagnostics.py attacks (untrained, the same architectures and
sizes: timm's test_resnet at 48 px, test_vit at 32 px with 4 px patches; attack time does not depend on
the weights' values) and attacks the same number of CIFAR-10 test images at epsilon 0, 1, 2, 4, 8 / 255.
Pass --models to time real members instead.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import timm
import torch

from vision_ensemble.config import ATTACK_EPSILONS_255, CIFAR10_CLASSES, PGD_STEPS
from vision_ensemble.data import load_dataset, subset_indices
from vision_ensemble.evaluation.diagnostics import attack_accuracies
from vision_ensemble.evaluation.ensemble import Ensemble, SoftVote
from vision_ensemble.model import Member, export_model, training_data_config


def test_members(folder: Path) -> list[str]:
    """The untrained members of tests/test_diagnostics.py, exported as timm folders."""
    paths = []
    for name, kwargs, img_size in (("test_resnet", {}, 48), ("test_vit", {"img_size": 32, "patch_size": 4}, 32)):
        model = timm.create_model(name, num_classes=len(CIFAR10_CLASSES), **kwargs)
        paths.append(str(export_model(model, folder / name, training_data_config(model, img_size), list(CIFAR10_CLASSES))))
    return paths


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default="../shared/data/cifar10.tar.gz")
    p.add_argument("--cache-dir")
    p.add_argument("--models", nargs="+", help="member folders (default: the test's untrained members)")
    p.add_argument("--samples", type=int, default=32, help="test images attacked (tests/test_diagnostics.py: 32)")
    p.add_argument("--pgd-steps", type=int, default=PGD_STEPS)
    p.add_argument("--tta", action="store_true", help="flip TTA, as evaluate.py --tta (the test uses it)")
    args = p.parse_args()
    torch.manual_seed(0)
    data = load_dataset(args.data_dir, args.cache_dir)
    keep = subset_indices(len(data.test), args.samples, 0)
    images = torch.from_numpy(data.test.images[keep]).permute(0, 3, 1, 2).float() / 255
    labels = torch.from_numpy(data.test.labels[keep])
    sources = args.models or test_members(Path(tempfile.mkdtemp(prefix="attack-time-")))
    ensemble = Ensemble([Member.load(s) for s in sources], tta_flip=args.tta)
    models = {Path(m.source).name: SoftVote([m], [1.0], tta_flip=args.tta, input_scale=255) for m in ensemble.members}
    models["ensemble"] = ensemble.soft_vote(input_scale=255)
    epsilons = [e / 255 for e in ATTACK_EPSILONS_255]
    print(f"{args.samples} images, epsilons {ATTACK_EPSILONS_255}/255, PGD {args.pgd_steps} steps, "
          f"{torch.get_num_threads()} torch threads")
    total = 0.0
    for name, model in models.items():
        start = time.perf_counter()
        attack_accuracies(model.eval(), images, labels, epsilons, args.pgd_steps)
        seconds = time.perf_counter() - start
        total += seconds
        print(f"{name}: {seconds:.1f} s")
    print(f"total: {total:.1f} s")


if __name__ == "__main__":
    main()
