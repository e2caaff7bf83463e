"""A member: one trained network with its own preprocessing (size, mean, std, interpolation from its
config.json), loaded from a timm folder or a Hub repo, run eagerly or through ONNX Runtime.

Members trained at different resolutions ensemble correctly because each one resizes and normalises for itself.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..data import BatchTransform
from ..hub import resolve_member
from .runtime import export_member, inference_session
from .timm_model import ModelError, load_model_folder


@dataclass
class Member:
    source: str                 # as written in the manifest: a Hub repo id or a folder
    model: torch.nn.Module
    data_config: dict
    class_names: list[str]
    training_args: dict = field(default_factory=dict)  # its training_args.json, when the folder has one
    transform: BatchTransform = field(init=False)
    session: object = field(default=None, init=False)  # an ONNX Runtime session, when serving through ORT

    def __post_init__(self):
        self.transform = BatchTransform.from_data_config(self.data_config)

    def use_onnxruntime(self, folder: str | Path, threads: int | None = None) -> None:
        """Run the network through ONNX Runtime (fp32; preprocessing stays the same torch code), exported by
        `runtime.export_member`, the code `python -m vision_ensemble.onnx_export` checks against PyTorch, on
        `threads` CPU threads (default: torch's).

        On a 2-core CPU at batch 1 this is about 1.5x faster than eager PyTorch with logits equal to ~1e-6
        (benchmarks/app_latency.py measures both and checks the top-3 agree).
        """
        self.session = inference_session(export_member(self, folder), threads)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        if self.session is not None:
            return torch.from_numpy(self.session.run(None, {"input": x.cpu().numpy()})[0])
        return self.model(x)

    @classmethod
    def load(cls, source: str, base_dir: str | Path | None = None, device: str | torch.device = "cpu") -> "Member":
        try:
            folder = resolve_member(source, base_dir)
            model, data_config, class_names = load_model_folder(folder)
        except (ModelError, RuntimeError) as exc:
            raise ModelError(f"member '{source}': {exc}") from None
        # channels_last: a CPU runs convolutions 1.8x faster in it (airbench_s, fp32, 2 cores: 578 against 320 img/s)
        args_file = folder / "training_args.json"
        training_args = json.loads(args_file.read_text()) if args_file.is_file() else {}
        member = cls(source, model.to(device, memory_format=torch.channels_last), data_config, class_names, training_args)
        member.transform.channels_last = True
        return member

    @torch.inference_mode()
    def probabilities(self, images: torch.Tensor, tta_flip: bool = False, batch_size: int = 256) -> torch.Tensor:
        """Softmax probabilities for a uint8 NCHW batch (flip TTA: mean over the image and its mirror)."""
        device = next(self.model.parameters()).device
        out = []
        starts = range(0, len(images), batch_size)
        for start in tqdm(starts, desc=self.source, unit="batch", leave=False, disable=len(starts) < 4):
            x = self.transform(images[start:start + batch_size].to(device))
            if tta_flip:
                x = torch.cat([x, x.flip(3)])
            p = self.logits(x).float().softmax(dim=1)
            out.append((p[: len(p) // 2] + p[len(p) // 2:]) / 2 if tta_flip else p)
        return torch.cat(out).cpu()
