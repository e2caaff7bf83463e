"""timm's Muon orthogonalises each update by Newton-Schulz iterations in bf16; on a CPU without native bf16 kernels
(AVX-512 BF16, AMX) that is emulated. This times one optimizer step's orthogonalisations, every Muon-routed weight
of a model, in bf16 (timm's) and in fp32 (what `create_optimizer` switches to on such a CPU), side by side.

    python benchmarks/muon_newton_schulz.py --model airbench_s --threads 2
"""

from __future__ import annotations

import argparse
import time

import timm
import torch
from timm.optim.muon import _COEFFICIENTS, _is_suitable_for_muon, resolve_ns_coefficients, zeropower_via_newtonschulz

import vision_ensemble.model  # noqa: F401  (registers airbench_*)
from vision_ensemble.training.finetuning import native_bf16


def seconds_per_step(weights: list[torch.Tensor], dtype: torch.dtype, repeats: int) -> float:
    coefficients = resolve_ns_coefficients("quintic", _COEFFICIENTS)
    updates = [torch.randn(w.shape[0], w[0].numel()) for w in weights]  # timm's "flatten" view of a conv weight
    for update in updates:  # one-off costs (oneDNN's kernels for each shape) are not the pace
        zeropower_via_newtonschulz(update, 5, coefficients, dtype=dtype)
    start = time.perf_counter()
    for _ in range(repeats):
        for update in updates:
            zeropower_via_newtonschulz(update, 5, coefficients, dtype=dtype)
    return (time.perf_counter() - start) / repeats


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="airbench_s")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = timm.create_model(args.model)
    weights = [p.detach() for p in model.parameters() if p.requires_grad and _is_suitable_for_muon(p)]
    print(f"{args.model}: {len(weights)} Muon-routed weights, {args.threads} thread(s), native bf16: "
          f"{native_bf16(on_gpu=False)}")
    for dtype in (torch.bfloat16, torch.float32):
        print(f"Newton-Schulz in {str(dtype).removeprefix('torch.')}: "
              f"{seconds_per_step(weights, dtype, args.repeats):.3f} s per optimizer step")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
