"""Student candidates: parameters, fp16 weight size and batch-1 ONNX Runtime latency on 2 CPU cores.

    python benchmarks/student_candidates.py --runs 200

The student distilled from the ensemble must fit one 16 MiB file in fp16 (8M parameters at most) and answer
one image in at most 10 ms on 2 CPU cores at its input size.  Each candidate is built by timm with a 10-class
head (random weights: latency does not depend on their values) at the input size it would train at (64 px for
CNNs, as the recipe members; 32 px with 4 px patches for the ViT), exported by the app's own ONNX path
(`vision_ensemble.model.runtime`) and timed in the app's session (spinning off) with 2 intra-op threads.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import timm
import torch

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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(CANDIDATES), choices=list(CANDIDATES))
    parser.add_argument("--runs", type=int, default=200, help="timed batch-1 runs per candidate")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads (CPU cores)")
    parser.add_argument("--output", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
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
