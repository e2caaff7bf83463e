"""Model: create a timm backbone for a dataset, export it in timm's Hub format, load it back.

Everything goes through timm's own factory and export functions, so an exported folder (or the Hub repo it
is pushed to) loads with `timm.create_model("local-dir:<folder>")` / `("hf-hub:<repo>", pretrained=True)`
and no code from this project.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import timm
import torch
from timm.data import resolve_data_config

from ..config import TrainConfig


class ModelError(RuntimeError):
    """A model that cannot be created or loaded, with a message that says what to do."""


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def create_model(cfg: TrainConfig, num_classes: int) -> tuple[torch.nn.Module, dict]:
    """The backbone with a fresh `num_classes` classifier, and its preprocessing config.

    `--pretrained` loads timm's ImageNet weights (from the Hub); `--pretrained-path` loads a local file through
    the same timm loader.  Either way timm drops the 1000-class ImageNet head and initialises a new one.
    """
    kwargs = dict(cfg.model_kwargs)
    if cfg.pretrained_path:
        path = Path(cfg.pretrained_path)
        if not path.is_file():
            raise ModelError(f"--pretrained-path {path}: no such file")
        kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": str(path.resolve()), "num_classes": 1000})
    elif cfg.pretrained:
        kwargs["pretrained"] = True
    try:
        model = timm.create_model(cfg.model, num_classes=num_classes, **kwargs)
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            raise ModelError(f"unknown timm model '{cfg.model}' (see timm.list_models())") from None
        raise ModelError(f"could not load weights for {cfg.model}: {_short(exc)}") from None
    except Exception as exc:  # network failures surface as many exception types (OSError, hub errors, ...)
        if cfg.pretrained_path:
            raise ModelError(f"could not load --pretrained-path {cfg.pretrained_path}: {_short(exc)}") from None
        raise ModelError(f"could not download ImageNet weights for {cfg.model} ({_short(exc)}). "
                         "Train from scratch with --no-pretrained, or give local weights with --pretrained-path.") from None
    return model, training_data_config(model, cfg.img_size, whole_image=cfg.augment != "photo")


def training_data_config(model: torch.nn.Module, img_size: int | None, whole_image: bool = True) -> dict:
    """timm's preprocessing for the model (mean, std, interpolation, crop_pct), at `img_size`.

    `whole_image` (CIFAR-style training) sets crop_pct 1: thumbnails are seen whole in training, evaluation
    and the app alike.  Photo training keeps the model's own crop_pct (resize to size / crop_pct, centre
    crop), which the exported config.json carries to evaluation and the app.
    """
    data_config = resolve_data_config({}, model=model)
    if img_size:
        data_config["input_size"] = (3, img_size, img_size)
    if whole_image:
        data_config["crop_pct"] = 1.0
    return data_config


def export_model(model: torch.nn.Module, folder: str | Path, data_config: dict, class_names: list[str],
                 extra_files: dict[str, object] | None = None, dtype: torch.dtype = torch.float32) -> Path:
    """Write `folder` in timm's Hub format: model.safetensors + config.json (+ JSON side files).

    timm's `save_for_hf` records the architecture, the `model_args` timm needs to rebuild it, label names and
    the preprocessing.  `dtype` float16 halves the file (a distilled student's, shipped in the repository);
    timm loads it into a float32 model as usual.  Written to a sibling folder first, then swapped in, so an interrupted export never
    replaces a good one.
    """
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    # A contiguous copy: channels_last weights are strided views that safetensors refuses.
    model = copy.deepcopy(model).to(dtype=dtype, memory_format=torch.contiguous_format)
    timm.models.save_for_hf(model, tmp, model_config={"label_names": list(class_names)},
                            safe_serialization=True, data_config=dict(data_config))
    for name, content in (extra_files or {}).items():
        text = content if isinstance(content, str) else json.dumps(content, indent=2, default=str)
        (tmp / name).write_text(text)
    if folder.exists():
        old = folder.with_name(folder.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        folder.rename(old)
        tmp.rename(folder)
        shutil.rmtree(old)
    else:
        tmp.rename(folder)
    return folder


def read_model_config(folder: str | Path) -> dict:
    path = Path(folder) / "config.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelError(f"{folder}: no config.json (not a timm model folder)") from None
    except json.JSONDecodeError as exc:
        raise ModelError(f"{path}: not valid JSON ({exc})") from None


def load_model_folder(folder: str | Path) -> tuple[torch.nn.Module, dict, list[str]]:
    """Model (eval mode), its preprocessing config and its class names, from a timm Hub-format folder."""
    folder = Path(folder)
    config = read_model_config(folder)
    weights = folder / "model.safetensors"  # what export_model writes and the Hub serves; never a pickle
    if not weights.is_file():
        raise ModelError(f"{weights} is missing (a timm model folder holds config.json and model.safetensors)")
    try:
        model = timm.create_model(f"local-dir:{folder.resolve()}", pretrained=True)
    except Exception as exc:  # corrupt or mismatched weights: say which file
        raise ModelError(f"{weights}: could not load the weights ({_short(exc)})") from None
    pretrained_cfg = config.get("pretrained_cfg", {})
    data_config = {k: pretrained_cfg[k] for k in ("input_size", "mean", "std", "interpolation", "crop_pct")
                   if k in pretrained_cfg}
    class_names = config.get("label_names") or pretrained_cfg.get("label_names") or \
        [str(i) for i in range(config["num_classes"])]
    return model.eval(), data_config, list(class_names)
