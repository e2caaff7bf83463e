"""Student candidates: parameters, fp16 weight size and batch-1 ONNX Runtime latency on 2 CPU cores.

    python benchmarks/student_candidates.py --runs 200

The student distilled from the ensemble must fit one 16 MiB file in fp16 (8M parameters at most) and answer
one image in at most 10 ms on 2 CPU cores at its input size.  Each candidate is built by timm with a 10-class
head (random weights: latency does not depend on their values) at the input size it would train at (64 px for
CNNs, as the recipe members; 32 px with 4 px patches for the ViT), exported by the app's own ONNX path
(`vision_ensemble.model.runtime`) and timed in the app's session (spinning off) with 2 intra-op threads.

    python benchmarks/student_candidates.py --versus-ensemble regnetx_008

times the chosen student against the three recipe members (`app_latency.build_members`) the way
`evaluate.py --student` does (`batch1_latency_ms`: `Ensemble.predict` on one CIFAR-10 example at a time,
ONNX Runtime, 2 threads), alternating the two models for 3 rounds so that load on the machine hits both.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # app_latency.build_members: the recipe members

import numpy as np
import timm
import torch
from app_latency import build_members

from vision_ensemble.config import CIFAR10_CLASSES, RECIPES
from vision_ensemble.evaluation.ensemble import Ensemble
from vision_ensemble.evaluation.student import batch1_latency_ms
from vision_ensemble.images import load_rgb
from vision_ensemble.model import Member, export_model, training_data_config
from vision_ensemble.model.runtime import LOGITS_NAME, export_onnx, inference_session

CANDIDATES = {  # name: (input size, timm kwargs)
    "resnet10t": (64, {}), "resnet14t": (64, {}), "resnet18": (64, {}), "convnext_atto": (64, {}),
    "convnext_femto": (64, {}), "efficientnet_b0": (64, {}), "mobilenetv3_large_100": (64, {}),
    "mobilenetv4_conv_small": (64, {}), "regnetx_008": (64, {}), "repvit_m0_9": (64, {}),
    "vit_tiny_patch16_224": (32, {"img_size": 32, "patch_size": 4}),
}
MAX_PARAMS, MAX_LATENCY_MS = 8e6, 10.0


def measure(name: str, size: int, kwargs: dict, folder: Path, runs: int, threads: int) -> dict:
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10, **kwargs).eval()
    params = sum(p.numel() for p in model.parameters())
    path = export_onnx(model, torch.zeros(1, 3, size, size), folder / f"{name}.onnx", LOGITS_NAME)
    session = inference_session(path, threads)
    x = np.random.default_rng(0).standard_normal((1, 3, size, size), dtype=np.float32)
    times = []
    for i in range(runs + 20):  # 20 warm-up runs
        start = time.perf_counter()
        session.run(None, {"input": x})
        if i >= 20:
            times.append((time.perf_counter() - start) * 1000)
    p50 = float(np.median(times))
    return {"model": name, "input_px": size, "params_m": params / 1e6, "fp16_mib": params * 2 / 2**20,
            "p50_ms": p50, "p90_ms": float(np.percentile(times, 90)),
            "fits": params <= MAX_PARAMS and p50 <= MAX_LATENCY_MS}


def versus_ensemble(student: str, folder: Path, rounds: int = 3) -> dict:
    """Median batch-1 ms of the recipe ensemble and of `student` (at its recipe size), as evaluate.py times them."""
    ensemble = Ensemble.from_manifest(build_members(folder, "recipe"))
    size, kwargs = RECIPES.get(student, {}).get("img_size", 64), RECIPES.get(student, {}).get("model_kwargs", {})
    model = timm.create_model(student, num_classes=10, **kwargs)
    export_model(model, folder / "student", training_data_config(model, size), list(CIFAR10_CLASSES),
                 dtype=torch.float16)
    alone = Ensemble([Member.load(str(folder / "student"))])
    image = torch.from_numpy(load_rgb(Path(__file__).resolve().parents[1] / "examples" / "cifar10_cat.png"))
    images = image.permute(2, 0, 1)[None]
    times = {"ensemble": [], student: []}
    for _ in range(rounds):
        times["ensemble"].append(batch1_latency_ms(ensemble, images))
        times[student].append(batch1_latency_ms(alone, images))
    return {name: float(np.median(values)) for name, values in times.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(CANDIDATES), choices=list(CANDIDATES))
    parser.add_argument("--runs", type=int, default=200, help="timed batch-1 runs per candidate")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads (CPU cores)")
    parser.add_argument("--output", type=Path, help="also write the rows as JSON here")
    parser.add_argument("--versus-ensemble", metavar="STUDENT",
                        help="instead: time STUDENT against the three recipe members, as evaluate.py --student does")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.versus_ensemble:
        with tempfile.TemporaryDirectory() as folder:
            result = versus_ensemble(args.versus_ensemble, Path(folder))
        print(" | ".join(f"{name} {ms:.2f} ms" for name, ms in result.items())
              + f" | ratio {result[args.versus_ensemble] / result['ensemble']:.2f}")
        return 0
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models:
            rows.append(measure(name, *CANDIDATES[name], Path(folder), args.runs, args.threads))
            r = rows[-1]
            print(f"| `{r['model']}` | {r['input_px']} | {r['params_m']:.2f} | {r['fp16_mib']:.1f} | "
                  f"{r['p50_ms']:.2f} / {r['p90_ms']:.2f} | {'yes' if r['fits'] else 'no'} |", flush=True)
    if args.output:
        args.output.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
