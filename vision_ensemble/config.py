"""All configuration in one place: data defaults, per-backbone recipes, training options, app limits.

`TrainConfig` is a dataclass; `build_parser` turns its fields (with their help text) into the argparse
parser of `train/finetune.py`, and `recipe_config` fills every option the user did not give from the
backbone's recipe, then from the dataclass default.  Evaluation and the app import the data and limit
defaults from here.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

# --- data -------------------------------------------------------------------------------------------

#: `--data-dir cifar10` means torchvision's CIFAR-10 download; anything else is a folder or an archive.
CIFAR10_NAME = "cifar10"
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
DEFAULT_VAL_SIZE = 0.1  # fraction of train (or a count): 5,000 of CIFAR-10's 50,000
DEFAULT_SEED = 0


def default_cache_root() -> Path:
    """Where decoded datasets and extracted archives live (override with VISION_ENSEMBLE_CACHE)."""
    env = os.environ.get("VISION_ENSEMBLE_CACHE")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vision_ensemble"


# --- serving and evaluation limits ----------------------------------------------------------------

MAX_IMAGE_PIXELS = 40_000_000  # larger images (decompression bombs) are refused before decoding
#: Uploads to the Space and to POST /api/predict (VISION_ENSEMBLE_MAX_UPLOAD_BYTES overrides it, e.g. in tests).
MAX_UPLOAD_BYTES = int(os.environ.get("VISION_ENSEMBLE_MAX_UPLOAD_BYTES", 20 * 1024 * 1024))
MAX_CSV_ROWS = 20_000_000
DEFAULT_MANIFEST = "ensemble.json"  # the app's default: a path, a folder holding it, or a Hub repo id
CLASSIFY_CONCURRENCY = 2  # predictions at once, in the Classify tab and in POST /api/predict alike
DEFAULT_TOP_K = 3


# --- ONNX export ----------------------------------------------------------------------------------------

ONNX_OPSET = 18  # the first opset whose Resize antialiases, as the members' downscaling does
ONNX_TOLERANCE = 1e-4  # largest allowed |ONNX Runtime - PyTorch| of a probability
ONNX_CHECK_IMAGES = 256  # images the export is checked on (and int8 accuracy measured on)


# --- training recipes ------------------------------------------------------------------------------

#: Per-backbone defaults for CIFAR-10-sized data trained from scratch or fine-tuned.  ViT-Small keeps
#: timm's architecture and adapts to 32 px images through timm's own `img_size`/`patch_size` arguments,
#: so the exported config rebuilds it with timm alone.
RECIPES: dict[str, dict] = {
    "seresnet50": dict(img_size=64, epochs=30, batch_size=512, lr=2e-3, weight_decay=0.05, warmup_epochs=2),
    "efficientnet_b0": dict(img_size=64, epochs=30, batch_size=512, lr=3e-3, weight_decay=0.05, warmup_epochs=2),
    "vit_small_patch16_224": dict(
        img_size=32, epochs=30, batch_size=512, lr=1e-3, weight_decay=0.05, warmup_epochs=3,
        model_kwargs={"img_size": 32, "patch_size": 4},
    ),
}


@dataclass
class TrainConfig:
    """Options of `train/finetune.py`.  Fields left as None are filled from the model's recipe."""

    model: str = field(default="seresnet50", metadata={"help": "timm model name (recipes: " + ", ".join(RECIPES) + ")"})
    pretrained: bool = field(default=False, metadata={"help": "start from timm's ImageNet weights (downloaded from the Hub)"})
    pretrained_path: str | None = field(default=None, metadata={"help": "local .safetensors/.pth backbone weights; the classifier is re-initialised"})
    model_kwargs: dict = field(default_factory=dict, metadata={"help": "extra timm.create_model arguments as JSON, e.g. '{\"drop_path_rate\": 0.1}'"})
    img_size: int | None = field(default=None, metadata={"help": "model input size in pixels (default: recipe, else the model's pretrained config)"})
    epochs: int | None = field(default=None, metadata={"help": "training epochs"})
    batch_size: int | None = field(default=None, metadata={"help": "batch size per process"})
    lr: float | None = field(default=None, metadata={"help": "peak learning rate (AdamW)"})
    weight_decay: float | None = field(default=None, metadata={"help": "AdamW weight decay"})
    warmup_epochs: int | None = field(default=None, metadata={"help": "linear warmup epochs before the cosine decay"})
    min_lr: float = field(default=1e-6, metadata={"help": "final learning rate of the cosine schedule"})
    mixup_alpha: float = field(default=0.8, metadata={"help": "MixUp alpha (0 disables)"})
    cutmix_alpha: float = field(default=1.0, metadata={"help": "CutMix alpha (0 disables)"})
    mixup_prob: float = field(default=1.0, metadata={"help": "probability of applying MixUp or CutMix to a batch"})
    label_smoothing: float = field(default=0.1, metadata={"help": "label smoothing (also inside MixUp targets)"})
    crop_padding: int = field(default=4, metadata={"help": "random-crop padding in source pixels (0 disables)"})
    hflip: bool = field(default=True, metadata={"help": "random horizontal flips"})
    ema: bool = field(default=False, metadata={"help": "keep an EMA of the weights (timm ModelEmaV3) and evaluate it"})
    ema_decay: float = field(default=0.999, metadata={"help": "EMA decay per step"})
    clip_grad: float | None = field(default=None, metadata={"help": "clip the gradient norm to this value"})
    compile: bool = field(default=False, metadata={"help": "torch.compile the model"})
    channels_last: bool = field(default=True, metadata={"help": "channels_last memory format"})
    mixed_precision: str | None = field(default=None, metadata={"help": "no|bf16|fp16 (default: bf16 on GPU, no on CPU)"})
    seed: int = field(default=DEFAULT_SEED, metadata={"help": "random seed (data split, init, augmentation)"})
    data_dir: str = field(default=CIFAR10_NAME, metadata={"help": "'cifar10' (torchvision download), an image-folder tree, or a .tar.gz/.zip of one"})
    cache_dir: str | None = field(default=None, metadata={"help": "decoded-dataset cache (default: $VISION_ENSEMBLE_CACHE or ~/.cache/vision_ensemble)"})
    val_size: float = field(default=DEFAULT_VAL_SIZE, metadata={"help": "validation split taken from train: a fraction or a count (ignored if the data has val/)"})
    data_mode: str = field(default="auto", metadata={"help": "device: decoded data kept on the GPU; stream: DataLoader with workers; auto: device when it fits"})
    num_workers: int = field(default=4, metadata={"help": "DataLoader workers for --data-mode stream"})
    max_train_samples: int | None = field(default=None, metadata={"help": "use only this many training images (quick runs)"})
    max_eval_samples: int | None = field(default=None, metadata={"help": "use only this many validation images"})
    output_dir: str = field(default="runs/{model}", metadata={"help": "run folder: checkpoints/, best/, metrics.jsonl, curves"})
    resume: str | None = field(default=None, metadata={"help": "'latest' or a checkpoint folder to continue from"})
    report_to: str = field(default="none", metadata={"help": "tensorboard|mlflow|wandb|all|none (Accelerate trackers)"})
    push_to_hub: bool = field(default=False, metadata={"help": "push <output-dir>/best to the Hub when training ends"})
    hub_repo_id: str | None = field(default=None, metadata={"help": "Hub repo id for --push-to-hub (default: <user>/<model>-<dataset>)"})
    hub_private: bool = field(default=False, metadata={"help": "create the Hub repo as private"})
    fail_at_epoch: int | None = field(default=None, metadata={"help": argparse.SUPPRESS})  # tests: inject a NaN loss
    stop_after_epoch: int | None = field(default=None, metadata={"help": argparse.SUPPRESS})  # tests: simulate an interruption


CHOICES = {"data_mode": ("auto", "device", "stream"), "report_to": ("none", "tensorboard", "mlflow", "wandb", "all"),
           "mixed_precision": (None, "no", "bf16", "fp16")}


def _parse_bool_flag(parser: argparse.ArgumentParser, name: str, f: dataclasses.Field) -> None:
    parser.add_argument(f"--{name}", dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                        help=f.metadata.get("help"))


def build_parser(description: str | None = None) -> argparse.ArgumentParser:
    import json

    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for f in dataclasses.fields(TrainConfig):
        name = f.name.replace("_", "-")
        help_text = f.metadata.get("help")
        if f.type in ("bool",):
            _parse_bool_flag(parser, name, f)
            continue
        kind = {"int": int, "float": float, "str": str, "int | None": int, "float | None": float,
                "str | None": str, "dict": json.loads}[f.type]
        parser.add_argument(f"--{name}", dest=f.name, type=kind, default=None, help=help_text)
    return parser


def recipe_config(args: argparse.Namespace | dict) -> TrainConfig:
    """Command-line values first, then the model's recipe, then the dataclass defaults."""
    given = {k: v for k, v in (vars(args) if isinstance(args, argparse.Namespace) else args).items() if v is not None}
    model = given.get("model", TrainConfig.model)
    values = {**RECIPES.get(model, {}), **given}
    if "model_kwargs" in given:  # merge with the recipe's instead of replacing it
        values["model_kwargs"] = {**RECIPES.get(model, {}).get("model_kwargs", {}), **given["model_kwargs"]}
    cfg = TrainConfig(**values)
    cfg.output_dir = cfg.output_dir.format(model=cfg.model)
    for name, allowed in CHOICES.items():
        if getattr(cfg, name) not in allowed:
            raise SystemExit(f"--{name.replace('_', '-')} {getattr(cfg, name)}: choose one of {', '.join(map(str, allowed))}")
    # Options a recipe-less model still needs.
    for name, fallback in dict(epochs=10, batch_size=128, lr=1e-3, weight_decay=0.05, warmup_epochs=1).items():
        if getattr(cfg, name) is None:
            setattr(cfg, name, fallback)
    return cfg
