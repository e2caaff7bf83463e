"""airbench's translate TTA on the images the ensemble is unsure of: what it would buy, and at what cost.

    python benchmarks/selective_tta.py --manifest models/cifar10 --data-dir ../shared/data/cifar10.tar.gz

The Space averages each member over the image and its mirror (2 forward passes). airbench's second TTA level adds
both shifted one pixel up-left and one down-right (reflect padding, 1/8 weight each: 6 passes), +0.27 points on
the shipped ensemble (BENCHMARKS.md) at 3x the work of every request. Here the 4 extra passes run only where the
manifest's uncertainty rule (chosen on validation) flags the flip-TTA prediction: the work is 2 + 4 x (flagged
share) passes an image. Reports, on the test split, top-1 with flip TTA and with the extra views on the flagged
images, how many images changed class (and of them, how many turned right and how many wrong, with the sign test's
z), and the mean passes an image; `--all` also runs them on every image (the full level 2, for comparison).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np
import torch
import torch.nn.functional as F

from vision_ensemble.config import DEFAULT_SEED, models_cache_size
from vision_ensemble.data import load_dataset
from vision_ensemble.evaluation.ensemble import Ensemble
from vision_ensemble.evaluation.predictions import evaluation_batch


@torch.inference_mode()
def translated_probabilities(member, images: torch.Tensor, batch_size: int = 500) -> np.ndarray:
    """Mean probability over the 4 views airbench adds: shifted 1 px up-left and down-right, each with its mirror."""
    out = []
    for start in range(0, len(images), batch_size):
        x = member.transform(images[start:start + batch_size])
        h, w = x.shape[-2:]
        padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
        views = [padded[..., :h, :w], padded[..., 2:, 2:]]
        views = torch.cat([*views, *(v.flip(3) for v in views)]).contiguous(memory_format=torch.channels_last)
        p = member.logits(views).float().softmax(dim=1)
        out.append(p.reshape(4, len(x), -1).mean(dim=0))
    return torch.cat(out).numpy()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", default=str(REPO / "models" / "cifar10"))
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data" / "cifar10.tar.gz"))
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--all", action="store_true", help="also run the extra views on every test image")
    parser.add_argument("--json", help="append the results to this JSON-lines file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    ensemble = Ensemble.from_manifest(args.manifest)
    if not ensemble.tta_flip:
        parser.error("the manifest serves without flip TTA; this measures the level above it")
    data = load_dataset(args.data_dir, None, seed=DEFAULT_SEED,  # the training cache; only its test split is read
                        cache_size=models_cache_size(m.data_config for m in ensemble.members))
    images, labels = evaluation_batch(data.test, None, 0)

    start = time.perf_counter()
    flip = ensemble.member_probabilities(images, batch_size=500)
    flip_s = time.perf_counter() - start
    probs = ensemble.combine(flip)
    flagged = ensemble.uncertainty.flags(probs, flip)
    start = time.perf_counter()
    extra = np.stack([translated_probabilities(m, images[torch.from_numpy(flagged)]) for m in ensemble.members])
    extra_s = time.perf_counter() - start
    selective = flip.copy()
    selective[:, flagged] = (flip[:, flagged] + extra) / 2
    before, after = probs.argmax(1), ensemble.combine(selective).argmax(1)
    right_before, right_after = before == labels, after == labels
    fixed, broken = int((right_after & ~right_before).sum()), int((right_before & ~right_after).sum())
    results = {"manifest": str(args.manifest), "test_images": len(labels), "flagged": int(flagged.sum()),
               "top1_flip": 100 * float(right_before.mean()), "top1_selective": 100 * float(right_after.mean()),
               "changed": int((after != before).sum()),
               # A sign test of the changes that matter: is "fixed" more than a coin would give of fixed + broken?
               "fixed": fixed, "broken": broken, "sign_test_z": (fixed - broken) / max(1, fixed + broken) ** 0.5,
               "flagged_top1_flip": 100 * float(right_before[flagged].mean()),
               "passes_per_image": 2 + 4 * float(flagged.mean()),
               "flip_s": round(flip_s, 1), "extra_s": round(extra_s, 1), "threads": torch.get_num_threads()}
    if args.all:
        every = np.stack([translated_probabilities(m, images) for m in ensemble.members])
        results["top1_translate_all"] = 100 * float((ensemble.combine((flip + every) / 2).argmax(1) == labels).mean())
    for key, value in results.items():
        print(f"{key:>20}: {value:.2f}" if isinstance(value, float) else f"{key:>20}: {value}")
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(results) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
