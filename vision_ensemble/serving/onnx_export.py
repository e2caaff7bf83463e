r"""ONNX export: each member's network, or the whole ensemble as one graph, checked against PyTorch.

    python -m vision_ensemble.onnx_export --manifest results/ensemble.json --output onnx/
    python -m vision_ensemble.onnx_export --manifest results/ensemble.json --output onnx/ --single-graph \
        --input-size 32 --quantize int8 --data-dir ../shared/data/cifar10.tar.gz

Per member: `<architecture>-<hash of its source>.onnx`, float NCHW normalised input at the member's size -> logits, dynamic batch (the
app's `--runtime onnx` serves these, preprocessing stays torch).  Single graph: `ensemble.onnx`, a uint8 (or
float [0, 1]) NCHW batch at `--input-size` -> calibrated probabilities: each member's resize and
normalisation, the fitted weights and the temperature are inside the graph, so any ONNX runtime serves it.
Every export is run through ONNX Runtime on real (or random) images and compared with PyTorch: each member's
logits within ONNX_RELATIVE_TOLERANCE of their largest magnitude (fp32 rounding grows with the logits), the
single graph's probabilities within the tolerance that implies, and the top-1 class shared on at least
ONNX_MIN_TOP1_AGREEMENT % of the images; otherwise it raises.  `--quantize int8` adds ONNX Runtime's dynamic int8 quantization of the graphs and,
with `--data-dir`, measures its accuracy change on the labelled test split.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch.onnx import symbolic_helper

from ..config import (DEFAULT_SEED, ONNX_CHECK_IMAGES, ONNX_MIN_TOP1_AGREEMENT, ONNX_OPSET, ONNX_RELATIVE_TOLERANCE,
                      ONNX_TOLERANCE)
from ..data import DataError, load_dataset, subset_indices
from ..evaluation.ensemble import Ensemble
from ..model import ModelError
from ..model.runtime import INPUT_NAME, export_member, export_onnx, inference_session

PROBS_NAME = "probabilities"


class OnnxCheckError(RuntimeError):
    """ONNX Runtime's output differs from PyTorch's by more than the tolerance."""


# --- the resize members use, in ONNX ---------------------------------------------------------------------

def _antialiased_resize(mode: str):
    """ONNX Resize (opset 18, antialias=1) for torch's antialiased bilinear/bicubic downscaling, which the
    TorchScript exporter does not translate.  Matches torch to ~3e-4 on the 0-255 scale (tests/test_onnx.py)."""

    def symbolic(g, x, output_size, align_corners, *scales):  # the traced overload gives one or two scale args
        output_size = symbolic_helper._parse_arg(output_size, "is")
        align_corners = symbolic_helper._parse_arg(align_corners, "i")
        batch_channels = g.op("Slice", g.op("Shape", x), g.op("Constant", value_t=torch.tensor([0])),
                              g.op("Constant", value_t=torch.tensor([2])))
        sizes = g.op("Concat", batch_channels, g.op("Constant", value_t=torch.tensor(output_size)), axis_i=0)
        unused = g.op("Constant", value_t=torch.tensor([], dtype=torch.float32))
        return g.op("Resize", x, unused, unused, sizes, mode_s=mode, antialias_i=1, exclude_outside_i=1,
                    cubic_coeff_a_f=-0.5,  # torch's bicubic kernel (ONNX defaults to -0.75)
                    coordinate_transformation_mode_s="align_corners" if align_corners else "pytorch_half_pixel")
    return symbolic


torch.onnx.register_custom_op_symbolic("aten::_upsample_bilinear2d_aa", _antialiased_resize("linear"), ONNX_OPSET)
torch.onnx.register_custom_op_symbolic("aten::_upsample_bicubic2d_aa", _antialiased_resize("cubic"), ONNX_OPSET)


class _Probabilities(torch.nn.Module):
    """The graph's output: probabilities, not the soft vote's log-probabilities."""

    def __init__(self, vote: torch.nn.Module):
        super().__init__()
        self.vote = vote

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.vote(images).exp()


def export_ensemble_graph(ensemble, path: str | Path, input_size: int, float_input: bool = False) -> Path:
    """`path`: one graph for the whole ensemble, input (batch, 3, input_size, input_size)."""
    dtype = torch.float32 if float_input else torch.uint8
    example = torch.zeros(1, 3, input_size, input_size, dtype=dtype)
    graph = _Probabilities(ensemble.soft_vote(input_scale=255.0 if float_input else 1.0))
    return export_onnx(graph, example, Path(path), PROBS_NAME)


# --- running and checking -------------------------------------------------------------------------------

def session_member_probabilities(member, session, images: torch.Tensor, tta_flip: bool = False,
                                 batch_size: int = 256) -> np.ndarray:
    """A member's probabilities for a uint8 NCHW batch with its network run by `session`."""
    saved, member.session = member.session, session
    try:
        return member.probabilities(images, tta_flip, batch_size).numpy()
    finally:
        member.session = saved


def graph_probabilities(session, images: torch.Tensor, float_input: bool = False, batch_size: int = 256) -> np.ndarray:
    out = []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        batch = batch.float().div(255.0) if float_input else batch
        out.append(session.run(None, {INPUT_NAME: batch.numpy()})[0])
    return np.concatenate(out)


def member_logits(member, images: torch.Tensor, session=None, batch_size: int = 256) -> np.ndarray:
    """A member network's logits for a uint8 NCHW batch: eager PyTorch, or run by `session`."""
    saved, member.session = member.session, session
    try:
        with torch.inference_mode():
            return torch.cat([member.logits(member.transform(images[start:start + batch_size])).float()
                              for start in range(0, len(images), batch_size)]).numpy()
    finally:
        member.session = saved


def check_close(name: str, onnx_out: np.ndarray, torch_out: np.ndarray, tolerance: float = ONNX_TOLERANCE,
                what: str = "probabilities") -> dict:
    """Max |diff| within `tolerance` and top-1 agreement of at least ONNX_MIN_TOP1_AGREEMENT %, else
    OnnxCheckError; returns both."""
    diff = float(np.abs(onnx_out - torch_out).max())
    agreement = float(np.mean(onnx_out.argmax(1) == torch_out.argmax(1)) * 100)
    ok = diff <= tolerance and agreement >= ONNX_MIN_TOP1_AGREEMENT
    print(f"{name}: ONNX Runtime vs PyTorch {what}, max |diff| {diff:.2e} (tolerance {tolerance:.2g}), top-1 "
          f"agreement {agreement:.1f}% on {len(torch_out)} images: {'ok' if ok else 'FAILED'}")
    if not ok:
        raise OnnxCheckError(f"{name}: ONNX Runtime's {what} differ from PyTorch's by {diff:.2e} (tolerance "
                             f"{tolerance:.2g}), top-1 agreement {agreement:.1f}% (at least "
                             f"{ONNX_MIN_TOP1_AGREEMENT:g}% needed)")
    return {"max_abs_diff": diff, "tolerance": tolerance, "top1_agreement": agreement}


def logit_tolerance(torch_logits: np.ndarray) -> float:
    """ONNX_RELATIVE_TOLERANCE of the largest |logit| (at least of 1): fp32 rounding scales with the logits."""
    return ONNX_RELATIVE_TOLERANCE * max(1.0, float(np.abs(torch_logits).max()))


def quantize_int8(path: Path) -> Path:
    """ONNX Runtime dynamic quantization: int8 weights, activations quantized on the fly.

    ONNX Runtime's pre-processing (graph optimisation, shape inference) runs first: the exporter turns
    identical weights (e.g. timm's zero-initialised last BatchNorm of each block, folded into its conv) into
    one initializer behind Identity nodes, which the quantizer cannot read.
    """
    import tempfile

    from onnxruntime.quantization import QuantType, quant_pre_process, quantize_dynamic

    quantized = path.with_suffix(".int8.onnx")
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / path.name
        quant_pre_process(str(path), str(prepared))
        quantize_dynamic(str(prepared), str(quantized), weight_type=QuantType.QInt8)
    return quantized


def accuracy_change(fp32: np.ndarray, int8: np.ndarray, labels: np.ndarray | None) -> dict:
    """Agreement of the two top-1 predictions, and each one's top-1 accuracy when labels are given."""
    result = {"images": len(fp32), "top1_agreement": float(np.mean(fp32.argmax(1) == int8.argmax(1)) * 100),
              "max_abs_prob_diff": float(np.abs(fp32 - int8).max())}
    if labels is not None:
        result["top1_fp32"] = float(np.mean(fp32.argmax(1) == labels) * 100)
        result["top1_int8"] = float(np.mean(int8.argmax(1) == labels) * 100)
    return result


def check_images(data_dir: str | None, input_size: int, n: int, seed: int = DEFAULT_SEED, cache_dir: str | None = None):
    """(uint8 NCHW images, labels or None): a seeded sample of the labelled test split, else random images."""
    if data_dir:
        data = load_dataset(data_dir, cache_dir)
        split = data.test if data.test is not None else data.val
        keep = subset_indices(len(split), n, seed)
        split = split.subset(keep) if keep is not None else split
        return torch.from_numpy(split.images).permute(0, 3, 1, 2).contiguous(), split.labels
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, input_size, input_size), dtype=torch.uint8, generator=generator), None


def export(ensemble, output: str | Path, single_graph: bool = False, input_size: int = 32, float_input: bool = False,
           quantize: str | None = None, images: torch.Tensor | None = None, labels: np.ndarray | None = None) -> dict:
    """Export, check against PyTorch on `images` and optionally quantize; returns what was written and measured."""
    output = Path(output)
    images = images if images is not None else check_images(None, input_size, ONNX_CHECK_IMAGES)[0]
    summary = {"single_graph": single_graph, "check_images": len(images), "files": {}}
    if single_graph:
        if tuple(images.shape[-2:]) != (input_size, input_size):
            raise ValueError(f"the single graph takes {input_size}x{input_size} images; the check images are "
                             f"{images.shape[-1]}x{images.shape[-2]} (give --input-size {images.shape[-1]})")
        torch_probs, _ = ensemble.predict(images)
        path = export_ensemble_graph(ensemble, output / "ensemble.onnx", input_size, float_input)
        onnx_probs = graph_probabilities(inference_session(path), images, float_input)
        summary["files"]["ensemble"] = str(path)
        # A softmax probability moves by at most half the largest change of its logits (divided by the temperature).
        scale = max(logit_tolerance(member_logits(m, images)) for m in ensemble.members) / 2 / ensemble.temperature
        summary["check"] = check_close("ensemble (one graph)", onnx_probs, torch_probs, max(ONNX_TOLERANCE, scale))
        if quantize:
            quantized = quantize_int8(path)
            int8_probs = graph_probabilities(inference_session(quantized), images, float_input)
            summary["files"]["ensemble_int8"] = str(quantized)
            summary["int8"] = accuracy_change(onnx_probs, int8_probs, labels)
        return summary
    summary["check"] = {}
    fp32_sessions, int8_sessions = [], []
    for member in ensemble.members:
        path = export_member(member, output)
        session = inference_session(path)
        summary["files"][member.source] = str(path)
        # The networks' logits, so the tolerance follows their scale (the manifest's flip TTA only mirrors input).
        torch_logits = member_logits(member, images)
        summary["check"][member.source] = check_close(member.source, member_logits(member, images, session),
                                                      torch_logits, logit_tolerance(torch_logits), "logits")
        fp32_sessions.append(session)
        if quantize:
            quantized = quantize_int8(path)
            summary["files"][member.source + " (int8)"] = str(quantized)
            int8_sessions.append(inference_session(quantized))
    if quantize:  # the ensemble's answer with every member's network int8, against every member's fp32
        fp32 = ensemble.combine(np.stack([session_member_probabilities(m, s, images, ensemble.tta_flip)
                                          for m, s in zip(ensemble.members, fp32_sessions)]))
        int8 = ensemble.combine(np.stack([session_member_probabilities(m, s, images, ensemble.tta_flip)
                                          for m, s in zip(ensemble.members, int8_sessions)]))
        summary["int8"] = accuracy_change(fp32, int8, labels)
    return summary


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m vision_ensemble.onnx_export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", required=True, help="ensemble.json (or a folder holding it)")
    parser.add_argument("--output", default="onnx", help="folder for the .onnx files and export.json")
    parser.add_argument("--single-graph", action="store_true",
                        help="one graph for the whole ensemble (preprocessing, members, weights, temperature)")
    parser.add_argument("--input-size", type=int, default=32,
                        help="the square input size the single graph takes, and of the random check images "
                             "when no --data-dir is given (CIFAR-10: 32)")
    parser.add_argument("--float-input", action="store_true",
                        help="--single-graph: take float [0, 1] pixels instead of uint8 0-255")
    parser.add_argument("--quantize", choices=["int8"], help="also write int8 dynamically quantized graphs")
    parser.add_argument("--data-dir", help="check on (and measure int8 accuracy on) this labelled data's test split "
                                           "instead of random images, e.g. ../shared/data/cifar10.tar.gz")
    parser.add_argument("--cache-dir", help="decoded-dataset cache for --data-dir, as for training and evaluation "
                                            "(default: $VISION_ENSEMBLE_CACHE or ~/.cache/vision_ensemble)")
    parser.add_argument("--check-images", type=int, default=ONNX_CHECK_IMAGES, help="images for the checks")
    args = parser.parse_args(argv)

    torch.set_grad_enabled(False)
    try:
        ensemble = Ensemble.from_manifest(args.manifest)
        images, labels = check_images(args.data_dir, args.input_size, args.check_images, cache_dir=args.cache_dir)
        summary = export(ensemble, args.output, args.single_graph, args.input_size, args.float_input, args.quantize,
                         images, labels)
    except (ModelError, DataError, OnnxCheckError, ValueError) as exc:
        sys.exit(f"error: {exc}")
    if "int8" in summary:
        q = summary["int8"]
        accuracy = (f"; top-1 fp32 {q['top1_fp32']:.2f}% -> int8 {q['top1_int8']:.2f}%" if "top1_fp32" in q else
                    " (give --data-dir for the accuracy change)")
        print(f"int8: top-1 agreement with fp32 {q['top1_agreement']:.2f}% on {q['images']} images{accuracy}")
    (Path(args.output) / "export.json").write_text(json.dumps(summary, indent=2))
    print(f"wrote {', '.join(summary['files'].values())} and {Path(args.output) / 'export.json'}")


if __name__ == "__main__":
    main()
