"""ONNX Runtime for one network: export it to ONNX (normalised float NCHW -> logits, dynamic batch) and open
a CPU inference session.  Below both the ensemble (members served through ORT) and the exporter
(`serving/onnx_export.py`, which adds the one-graph export and the checks)."""

from __future__ import annotations

import hashlib
import re
import warnings
from pathlib import Path

import torch

from ..config import ONNX_OPSET

INPUT_NAME, LOGITS_NAME = "input", "logits"


def export_onnx(module: torch.nn.Module, example: torch.Tensor, path: Path, output_name: str) -> Path:
    """`module` traced on `example` into `path`, input and output with a dynamic batch dimension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # the TorchScript-based exporter warns about its own deprecation and traces
        warnings.simplefilter("ignore")
        torch.onnx.export(module.cpu().eval(), (example,), str(path), dynamo=False, opset_version=ONNX_OPSET,
                          input_names=[INPUT_NAME], output_names=[output_name],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, output_name: {0: "batch"}})
    return path


def member_filename(member) -> str:
    """`<architecture>-<8 hex digits of the source's hash>.onnx`: readable, one per member, never hidden (a source
    such as `../m1/best` would otherwise become `.._m1_best.onnx`)."""
    architecture = getattr(member.model, "pretrained_cfg", {}).get("architecture") or type(member.model).__name__
    digest = hashlib.sha256(member.source.encode()).hexdigest()[:8]
    return f"{re.sub(r'[^A-Za-z0-9_-]', '_', architecture)}-{digest}.onnx"


def export_member(member, folder: str | Path) -> Path:
    """`<folder>/<member_filename>`: normalised float NCHW at the member's input size -> logits, dynamic batch."""
    example = torch.zeros(1, *member.data_config["input_size"])
    return export_onnx(member.model, example, Path(folder) / member_filename(member), LOGITS_NAME)


def inference_session(path: str | Path, threads: int | None = None):
    """A CPU ONNX Runtime session whose idle threads sleep instead of spinning.

    Each member has its own session and thread pool: spinning idle pools steal the cores from the member
    that is running (measured 231 ms versus 123 ms for three members, see BENCHMARKS.md).
    """
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
