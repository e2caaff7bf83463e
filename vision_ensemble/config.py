"""All configuration in one place: data defaults, per-backbone recipes, training options, app limits.

`TrainConfig` is a dataclass; `build_parser` turns its fields (with their help text) into the argparse
parser of `train/finetune.py`, and `recipe_config` fills every option the user did not give from the
backbone's recipe, then from the dataclass default.  Evaluation and the app import the data and limit
defaults from here.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
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
DEFAULT_CROP_PCT = 0.875  # timm's default eval crop: a 224 px input is cropped from a 256 px resize
#: The data check (python -m vision_ensemble.datacheck, and at every cache build): warn when train's largest
#: class has this many times the images of its smallest; near-duplicates are perceptual hashes (64 bits) at
#: most this many bits apart (imagehash's phash: 4 keeps resized and re-encoded copies, not merely similar
#: shots).
IMBALANCE_WARNING_RATIO = 3.0
NEAR_DUPLICATE_DISTANCE = 4
DATACHECK_PAIRS_KEPT = 1000  # duplicate pairs listed in datacheck.json and .html; all are counted


def default_cache_size(img_size: int, crop_pct: float = DEFAULT_CROP_PCT) -> int:
    """Decoded-cache size for a model input: the eval resize (img_size / crop_pct, with at least timm's default
    margin) rounded up to a multiple of 32, so 224 px -> 256 px and 32 px -> 64 px whatever the model's
    crop_pct between 0.875 and 1 (training and evaluation then share one cache); RandomResizedCrop and the
    eval crop both work inside it."""
    return math.ceil(img_size / min(crop_pct, DEFAULT_CROP_PCT) / 32) * 32


def models_cache_size(data_configs) -> int:
    """The decoded-cache size that serves every one of these models (timm data configs): the largest of their
    `default_cache_size`s, as training chose it, so evaluation reuses the training cache."""
    return max(default_cache_size(max(c["input_size"][1:]), c.get("crop_pct", 1.0)) for c in data_configs)


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
#: The app's default (a path, a folder holding ensemble.json, or a Hub repo id): the CIFAR-10 ensemble trained on a
#: 2-core CPU and shipped in the repository (train/cifar10_cpu.sh writes it), relative to where the app runs.
DEFAULT_MANIFEST = "models/cifar10"
LATENCY_THREADS = 2  # CPU threads of the batch-1 latency evaluate.py reports: a free CPU Space's 2 cores
DEFAULT_BOOTSTRAP_REPLICATES = 1000  # the threshold tab's "confidence intervals" box; the CLI's --bootstrap N
DEFAULT_BOOTSTRAP_CONFIDENCE = 0.95
DEFAULT_BOOTSTRAP_SEED = 0
BOOTSTRAP_CHUNK = 50  # replicates per parallel kernel call: the progress bar's step
CLASSIFY_CONCURRENCY = 2  # predictions at once, in the Classify tab and in POST /api/predict alike
#: Admission (serving/admission.py), shared by POST /api/predict and the Classify tab: past CLASSIFY_CONCURRENCY
#: running requests at most ADMISSION_QUEUE wait (python app.py --slots/--queue, VISION_ENSEMBLE_SLOTS/_QUEUE); the
#: next is refused at once (503 and Retry-After).  Sized from a p99 budget of 10 s on 2 cores: the last one admitted
#: waits for (slots + queue) / slots = 9 predictions of about 0.3 s (the heaviest ensemble measured, three members at
#: 224 px on 2 loaded cores, BENCHMARKS.md), 2.7 s, a third of the budget: the rest is left to the cores' work of
#: receiving the crowd's uploads.  The shipped 32 px ensemble predicts in milliseconds and waits far less.
ADMISSION_QUEUE = 16
#: One client address may hold every slot and this many waiting places, no more: a script cannot fill the queue
#: ahead of every browser (VISION_ENSEMBLE_WAITING_PER_CLIENT overrides it, e.g. to measure the rule).
WAITING_PER_CLIENT = int(os.environ.get("VISION_ENSEMBLE_WAITING_PER_CLIENT", 1))
#: An admitted upload holds a waiting place while it arrives, so a crowd trickling bytes in would hold every place:
#: after its first UPLOAD_GRACE_S an upload must average MIN_UPLOAD_BYTES_PER_S (160 kbit/s, a poor mobile uplink)
#: or it is answered 408 and its place given back (VISION_ENSEMBLE_UPLOAD_GRACE_S overrides the grace, e.g. in tests).
UPLOAD_GRACE_S = float(os.environ.get("VISION_ENSEMBLE_UPLOAD_GRACE_S", 10))
MIN_UPLOAD_BYTES_PER_S = 20 * 1024
#: /metrics answers only requests carrying `Authorization: Bearer <this>` when it is set (e.g. a Space secret):
#: request counts and queue depths are not for every visitor.  Unset, /metrics is open, as Prometheus exporters are.
METRICS_TOKEN = os.environ.get("VISION_ENSEMBLE_METRICS_TOKEN") or None
#: Proxies whose X-Forwarded-For names the client (uvicorn's setting; its FORWARDED_ALLOW_IPS overrides it).  On a
#: Hugging Face Space (SPACE_ID set) every request comes through the Space's proxy: without trusting it, all clients
#: would share its address and so one client's share of the queue.  A client can forge the header: that defeats the
#: per-client rule, not the bound on the queue.
FORWARDED_ALLOW_IPS = os.environ.get("FORWARDED_ALLOW_IPS", "*" if os.environ.get("SPACE_ID") else "127.0.0.1")
DEFAULT_TOP_K = 3
#: Evaluation batches hold this many input pixels (500 images at 64 px, 40 at 224 px): the members' activations,
#: not the split's size, then set evaluate.py's memory (about 1.3 GB anonymous at 224 px, BENCHMARKS.md).
EVAL_BATCH_PIXELS = 500 * 64 * 64
#: The Space deletes uploads and result files older than this (serving/tempfiles.py), checking a third as often.
TEMP_FILE_MAX_AGE_S = int(os.environ.get("VISION_ENSEMBLE_TEMP_MAX_AGE_S", 900))
TEMP_SWEEP_EVERY_S = max(1, TEMP_FILE_MAX_AGE_S // 3)
#: The server keeps an idle keep-alive connection this long.  Longer than clients keep theirs (httpx and most
#: browsers: 5 s), so the client closes first: with uvicorn's 5 s both closed at once now and then, and a request
#: sent on the closing connection was reset (7 in the soak hour, BENCHMARKS.md).
KEEP_ALIVE_S = 65


# --- ONNX export ----------------------------------------------------------------------------------------

ONNX_OPSET = 18  # the first opset whose Resize antialiases, as the members' downscaling does
ONNX_TOLERANCE = 1e-4  # largest allowed |ONNX Runtime - PyTorch| of a probability, for logits within +-1
#: Largest allowed |ONNX Runtime - PyTorch| of a logit relative to the largest |logit| (fp32 rounding grows with
#: the logits: an efficientnet_b0 whose logits reach 160 differs by ~1e-4 of that, a wrong graph by far more).
ONNX_RELATIVE_TOLERANCE = 1e-3
ONNX_MIN_TOP1_AGREEMENT = 99.0  # % of check images whose top-1 class ONNX Runtime and PyTorch must share
ONNX_CHECK_IMAGES = 256  # images the export is checked on (and int8 accuracy measured on)


# --- experiment tracking ----------------------------------------------------------------------------

TRACKERS = ("tensorboard", "mlflow", "wandb")  # what `--report-to all` means
TRACKING_PROJECT = "vision_ensemble"  # MLflow experiment, W&B project, TensorBoard folder under --output-dir
TRACKING_INSTALL = "pip install 'vision-ensemble[tracking]'"

# --- hyperparameter sweeps (python -m vision_ensemble.sweep) --------------------------------------

#: What a sweep searches, one finetune option per entry (override with `--space FILE.yaml|json` in this
#: shape): `low`/`high` (ints give an integer range; `log: true` samples on a log scale) or `choices`.
#: drop_path_rate goes into --model-kwargs; ema_decay also turns on --ema.
SWEEP_SPACE = {
    "lr": {"low": 1e-4, "high": 1e-2, "log": True},
    "weight_decay": {"low": 1e-3, "high": 0.3, "log": True},
    "mixup_alpha": {"low": 0.0, "high": 1.0},
    "cutmix_alpha": {"low": 0.0, "high": 1.0},
    "drop_path_rate": {"low": 0.0, "high": 0.3},
    "augment_magnitude": {"low": 3, "high": 15},
    "ema_decay": {"low": 0.99, "high": 0.9999, "log": True},
}
SWEEP_STORAGE = "sqlite:///sweep.db"  # any Optuna storage URL: machines given the same one share the study
SWEEP_TRIALS = 20  # trials in the whole study, all workers together
SWEEP_PRUNE_AFTER = 5  # trials completed before the median pruner stops weak ones early

# --- labelling your own images (python -m vision_ensemble.labeler) ---------------------------------

LABELS_FILENAME = "labels.csv"  # written in the image folder unless --labels says otherwise
SPLITS_FILENAME = "splits.csv"  # written at the root of an exported tree
DEFAULT_SPLIT_RATIOS = (0.8, 0.1, 0.1)  # train, val, test shares of the labelled images
LABELER_DISPLAY_SIZE = (512, 1600)  # smallest and largest longest side, in pixels, of the image shown

# --- uncertainty hint and diagnostics (evaluation/evaluate.py) -------------------------------------

#: The uncertainty rule flags a prediction when fewer than this fraction of the members share the
#: ensemble's top class, or when its calibrated probability is under the highest cut-off at which the
#: validation predictions below it are right at most UNCERTAINTY_FLAGGED_ACCURACY of the time.
UNCERTAINTY_MIN_AGREEMENT = 0.5
UNCERTAINTY_FLAGGED_ACCURACY = 0.5
#: Conformal prediction sets (evaluate.py --coverage/--conformal): the share of images whose set holds the true
#: class, and the score.  APS by default: its sets never come out empty and grow with how hard the image is (the
#: honest answer on photos that are none of the classes); LAC gives the smallest sets on average but may give
#: empty ones; RAPS is APS with a penalty on long sets, made for a thousand classes rather than ten.
DEFAULT_COVERAGE = 0.9
CONFORMAL_SCORES = ("aps", "lac", "raps")
DEFAULT_CONFORMAL_SCORE = "aps"
RAPS_LAMBDAS = (0.001, 0.01, 0.1, 0.2, 0.5)  # penalty weights tried (Angelopoulos et al. 2021)
RAPS_TUNING_SHARE = 0.2  # of the validation split, held out to choose RAPS's penalty
COVERAGE_CURVE_LEVELS = (0.5, 0.99)  # the coverage plot's range of levels
ATTACK_EPSILONS_255 = (0, 1, 2, 4, 8)  # L-inf attack radii, in 1/255 steps of [0, 1] pixel values
DEFAULT_ATTACK_SAMPLES = 256  # test images attacked by `--diagnose`
PGD_STEPS = 10  # PGD step size is 2.5 * epsilon / steps (Madry et al.), so it can reach the ball's edge
#: Grad-CAM reads a CNN's last stage whose map is at least this many cells across at the member's input
#: size: at the recipes' 64 px the last stage of a stride-32 CNN is 2x2, too coarse to show where.
GRADCAM_MIN_GRID = 4
GALLERY_ERRORS = 8  # most confident errors drawn in error_gallery.png
TOP_CONFUSIONS = 10


# --- training for a time (--time-limit) -------------------------------------------------------------

TIME_LIMIT_PROBE_STEPS = 300  # a first epoch longer than this is measured on its first steps alone
#: Models with a data-dependent first layer (airbench's patch whitening, `init_whitening`) set it from this many
#: training images before the first step.
WHITENING_IMAGES = 5000

# --- training recipes ------------------------------------------------------------------------------

#: The airbench networks vision_ensemble/model/airbench.py registers with timm, each trained by its recipe in RECIPES.
AIRBENCH_MODELS = ("airbench_s", "airbench95", "airbench96", "airbench_m", "airbench_l")

#: Per-backbone defaults for CIFAR-10-sized data trained from scratch or fine-tuned.  ViT-Small keeps
#: timm's architecture and adapts to 32 px images through timm's own `img_size`/`patch_size` arguments,
#: so the exported config rebuilds it with timm alone.
RECIPES: dict[str, dict] = {
    "seresnet50": dict(img_size=64, epochs=30, batch_size=512, lr=2e-3, lr_base_size=512, weight_decay=0.05, warmup_epochs=2),
    "efficientnet_b0": dict(img_size=64, epochs=30, batch_size=512, lr=3e-3, lr_base_size=512, weight_decay=0.05, warmup_epochs=2),
    # The default student (DEFAULT_STUDENT): 6.6M parameters (12.6 MiB in fp16), 2.3 ms per image on 2 CPU cores
    # at 64 px through ONNX Runtime (BENCHMARKS.md), trained as the CNN members are.
    "regnetx_008": dict(img_size=64, epochs=30, batch_size=512, lr=2e-3, lr_base_size=512, weight_decay=0.05, warmup_epochs=2),
    # airbench's CIFAR network and recipe (vision_ensemble/model/airbench.py; BENCHMARKS.md "The CPU-trained
    # ensemble"): Nesterov SGD at airbench94's rate (1.5 for a batch of 1024, momentum 0.85, weight decay 2e-3 per
    # step at the peak), BatchNorm biases at 64x the rate, label smoothing 0.2, flip + 2 px translation, no
    # MixUp/CutMix (a short run does not recover their cost), bf16 autocast where the CPU computes it natively (2x
    # fp32 with AVX-512 BF16; emulated elsewhere, and then 12x slower than fp32: fp32 there).
    **{name: dict(img_size=32, epochs=15, batch_size=1024, opt="sgd", momentum=0.85, lr=1.5, lr_base_size=1024,
                  weight_decay=1.33e-3, norm_bias_lr_scale=64.0, warmup_epochs=2, label_smoothing=0.2,
                  mixup_alpha=0.0, cutmix_alpha=0.0, crop_padding=2, mixed_precision="bf16-if-native")
       for name in AIRBENCH_MODELS},
    "vit_small_patch16_224": dict(
        img_size=32, epochs=30, batch_size=512, lr=1e-3, lr_base_size=512, weight_decay=0.05, warmup_epochs=3,
        model_kwargs={"img_size": 32, "patch_size": 4},
    ),
}
# airbench95's changes to airbench94's recipe: a lower rate (10 against 11.5 in its units) at the same weight decay
# per step, and 16 epochs (its 15 with alternating flip; 16-17 with the random flip used here).
RECIPES["airbench95"].update(epochs=16, lr=1.3, weight_decay=1.53e-3)
# airbench96's (its 2024-06 version): a rate of 9 against airbench94's 11.5 in its units, its weight decay per step
# (0.012 against 0.0153), its augmentation (4 px translation, a 12 px cutout square) and its 31 epochs: about
# 3 h 50 min on a 2-core CPU with native bf16 (two sittings: STOP_AFTER_EPOCH), where 16 gave 91.27% against
# 31's 92.36% with flip TTA (BENCHMARKS.md "airbench96 at its 31 epochs").
RECIPES["airbench96"].update(epochs=31, lr=1.17, weight_decay=1.34e-3, crop_padding=4, cutout=12)


#: `--teacher` without `--model` trains this student (benchmarks/student_candidates.py, BENCHMARKS.md).
DEFAULT_STUDENT = "regnetx_008"
#: Hinton et al.'s soft-target loss at the setting of the CIFAR distillation benchmarks (Tian et al., CRD,
#: 2020: T = 4, 0.9 of the loss on the teacher, 0.1 on the labels).
DISTILL_TEMPERATURE, DISTILL_ALPHA = 4.0, 0.9


@dataclass
class TrainConfig:
    """Options of `train/finetune.py`.  Fields left as None are filled from the model's recipe."""

    model: str = field(default="seresnet50", metadata={"help": "timm model name (recipes: " + ", ".join(RECIPES) + ")"})
    pretrained: bool = field(default=False, metadata={"help": "start from timm's ImageNet weights (downloaded from the Hub)"})
    pretrained_path: str | None = field(default=None, metadata={"help": "local .safetensors/.pth backbone weights; the classifier is re-initialised"})
    model_kwargs: dict = field(default_factory=dict, metadata={"help": "extra timm.create_model arguments as JSON, e.g. '{\"drop_path_rate\": 0.1}'"})
    img_size: int | None = field(default=None, metadata={"help": "model input size in pixels (default: recipe, else the model's pretrained config)"})
    epochs: int | None = field(default=None, metadata={"help": "training epochs"})
    time_limit: float | None = field(default=None, metadata={"help": f"train for this many minutes of wall-clock time (from the process start to its end, the final predictions included) instead of --epochs: the first epochs measure the speed with the evaluation and checkpoint (the second epoch when several fit, the first one when not, the first {TIME_LIMIT_PROBE_STEPS} steps of a longer one), then the number of epochs that fits is fixed (logged, recorded in training_args.json and in checkpoints, so --resume keeps it) and the warmup + cosine schedule is set to end with it; after each later epoch the count is fitted again to the pace of the last tenth of the limit and the schedule's horizon moved (printed) when it is off by more than 5%% of the epochs left"})
    batch_size: int | str | None = field(default=None, metadata={"help": "batch size per process, or auto: start from the recipe's batch and halve it until a training step and an evaluation step fit in memory (Accelerate's find_executable_batch_size; the size found is recorded in training_args.json)"})
    lr: float | None = field(default=None, metadata={"help": "peak learning rate (AdamW) for a global batch of --lr-base-size; the run's rate follows its global batch (--lr-scale)"})
    lr_base_size: int | None = field(default=None, metadata={"help": "global batch size that --lr is given for (default 256, as timm; a recipe's own lr is given at its batch, 512)"})
    lr_scale: str = field(default="auto", metadata={"help": "how the rate follows the global batch, as timm's train.py: lr * (global_batch / lr_base_size) for linear, its square root for sqrt; auto: sqrt for Adam-family optimizers, linear otherwise; none: --lr as given"})
    opt: str = field(default="adamw", metadata={"help": "optimizer, any of timm's (create_optimizer_v2): adamw, sgd (Nesterov momentum), lamb, ..."})
    momentum: float = field(default=0.9, metadata={"help": "momentum of momentum optimizers (sgd)"})
    norm_bias_lr_scale: float = field(default=1.0, metadata={"help": "learning-rate multiplier of the normalisation layers' biases (airbench: 64, with their scale fixed they train faster)"})
    layer_decay: float | None = field(default=None, metadata={"help": "layer-wise lr decay (timm create_optimizer_v2): each layer group below the head trains at this factor times the rate of the one above, e.g. 0.75"})
    freeze: str = field(default="none", metadata={"help": "none: train everything; backbone: only the classifier (linear probe); stages:N: the last N stages (timm's coarse parameter groups, model.group_matcher(coarse=True): ResNet layer1-4, EfficientNet blocks.0-6, ViT blocks) plus the head. Frozen parameters leave the optimizer; frozen BatchNorm layers keep their running statistics"})
    weight_decay: float | None = field(default=None, metadata={"help": "weight decay (timm's: not on biases and normalisation layers)"})
    warmup_epochs: int | None = field(default=None, metadata={"help": "linear warmup epochs before the cosine decay"})
    min_lr: float = field(default=1e-6, metadata={"help": "final learning rate of the cosine schedule"})
    mixup_alpha: float = field(default=0.8, metadata={"help": "MixUp alpha (0 disables)"})
    cutmix_alpha: float = field(default=1.0, metadata={"help": "CutMix alpha (0 disables)"})
    mixup_prob: float = field(default=1.0, metadata={"help": "probability of applying MixUp or CutMix to a batch"})
    label_smoothing: float = field(default=0.1, metadata={"help": "label smoothing (also inside MixUp targets)"})
    augment: str = field(default="auto", metadata={"help": "training augmentation. cifar: random crop from reflection-padded images + flip; photo: RandomResizedCrop + flip + --auto-augment policy + RandomErasing (Kornia, per sample, on the device), evaluated at the model's own crop_pct; auto: cifar when the cached images are <= 64 px, else photo (recorded resolved in training_args.json)"})
    crop_padding: int = field(default=4, metadata={"help": "cifar: random-crop padding in source pixels (0 disables)"})
    cutout: int = field(default=0, metadata={"help": "cifar: blank one random SIZE x SIZE square of each training image (to the mean colour; DeVries & Taylor 2017, airbench96: 12 at 32 px), for runs long enough to overfit; 0 disables"})
    hflip: bool = field(default=True, metadata={"help": "random horizontal flips"})
    alternating_flip: bool = field(default=False, metadata={"help": "cifar: airbench's derandomized flip: each image flipped at random in the first epoch, then the other way round every epoch after, so that consecutive epochs show both views"})
    auto_augment: str = field(default="randaugment", metadata={"help": "photo: randaugment (2 operations at --augment-magnitude), trivialaugment (1 operation, its magnitude drawn per image) or none"})
    augment_magnitude: int = field(default=9, metadata={"help": "photo: RandAugment magnitude, 1-29 on Kornia's scale (each operation at m/30 of its range)"})
    erase_prob: float = field(default=0.25, metadata={"help": "photo: probability of RandomErasing per image (0 disables)"})
    ema: bool = field(default=False, metadata={"help": "keep an EMA of the weights (timm ModelEmaV3) and evaluate it"})
    ema_decay: float = field(default=0.999, metadata={"help": "EMA decay per step"})
    lookahead: bool = field(default=False, metadata={"help": "airbench's Lookahead: every 5 steps a slow copy of the weights (BatchNorm statistics included) moves toward the trained ones and the network is reset to it, averaging little early and most late (decay 0.95^5 x progress^3); the last step leaves the network at the slow copy"})
    clip_grad: float | None = field(default=None, metadata={"help": "clip the gradient norm to this value"})
    compile: bool = field(default=False, metadata={"help": "torch.compile the model"})
    channels_last: bool = field(default=True, metadata={"help": "channels_last memory format"})
    mixed_precision: str | None = field(default=None, metadata={"help": "no|bf16|fp16|bf16-if-native (default: bf16 on GPU, no on CPU; bf16-if-native: bf16 on GPU and on a CPU with native bf16 kernels, AVX-512 BF16 or AMX, else no: emulated bf16 is ~12x slower than fp32)"})
    cpu_threads: int | None = field(default=None, metadata={"help": "CPU threads per training process (default: the cores this process may use divided among the machine's processes; accelerate launch otherwise leaves one thread each)"})
    seed: int = field(default=DEFAULT_SEED, metadata={"help": "random seed (initial weights, augmentation, batch order): what differs between an ensemble's members"})
    split_seed: int = field(default=DEFAULT_SEED, metadata={"help": "seed of the train/val split: keep it the same for every member of an ensemble (evaluate.py refuses members whose splits differ), or one member trains on the images the others are validated and calibrated on"})
    data_dir: str = field(default=CIFAR10_NAME, metadata={"help": "'cifar10' (torchvision download), an image-folder tree, a .tar.gz/.zip of one, a `datasets` save_to_disk folder, parquet files (folder or glob), or a Hub dataset id such as uoft-cs/cifar10"})
    cache_dir: str | None = field(default=None, metadata={"help": "decoded-dataset cache (default: $VISION_ENSEMBLE_CACHE or ~/.cache/vision_ensemble)"})
    cache_size: int | None = field(default=None, metadata={"help": "decoded-cache image size in px: data whose typical image is larger is stored resized (shorter side) and centre-cropped to this square (default: img-size / 0.875 rounded up to a multiple of 32, e.g. 224 -> 256)"})
    val_size: float = field(default=DEFAULT_VAL_SIZE, metadata={"help": "validation split taken from train: a fraction or a count (ignored if the data has val/)"})
    data_mode: str = field(default="auto", metadata={"help": "device: decoded data kept on the GPU; stream: batches gathered from the memory-mapped cache by DataLoader workers; auto: device when it fits"})
    num_workers: int = field(default=4, metadata={"help": "DataLoader workers for --data-mode stream"})
    data_check: bool = field(default=True, metadata={"help": "check the data when its cache is built (python -m vision_ensemble.datacheck: class counts and imbalance, skipped files, duplicates within and across splits) and print the short form; the full report is kept beside the cache"})
    strict_data: bool = field(default=False, metadata={"help": "refuse to train when the data check finds the same image (exact or near-duplicate) in two splits: a test image also in train makes test accuracy a lie"})
    class_weights: str = field(default="none", metadata={"help": "balanced: weight the loss by inverse class frequency (as scikit-learn's compute_class_weight; a MixUp/CutMix sample weighs its mix of classes); none: every sample alike"})
    sampler: str = field(default="shuffle", metadata={"help": "balanced: draw each epoch's images with replacement, every class equally often (seeded per epoch; each process its own shard); shuffle: every image once per epoch"})
    max_train_samples: int | None = field(default=None, metadata={"help": "use only this many training images (quick runs)"})
    max_eval_samples: int | None = field(default=None, metadata={"help": "use only this many validation images"})
    output_dir: str = field(default="runs/{model}", metadata={"help": "run folder: checkpoints/, best/, metrics.jsonl, curves"})
    resume: str | None = field(default=None, metadata={"help": "'latest' or a checkpoint folder to continue from"})
    report_to: str = field(default="none", metadata={"help": "tensorboard|mlflow|wandb|all|none: Accelerate trackers (all = the three; "
                                                             "MLflow logs to $MLFLOW_TRACKING_URI, default sqlite:///mlflow.db)"})
    push_to_hub: bool = field(default=False, metadata={"help": "push <output-dir>/best to the Hub when training ends"})
    hub_repo_id: str | None = field(default=None, metadata={"help": "Hub repo id for --push-to-hub (default: <user>/<model>-<dataset>)"})
    hub_private: bool = field(default=False, metadata={"help": "create the Hub repo as private"})
    teacher: list[str] = field(default_factory=list, metadata={"help": "distil from a teacher ensemble: its ensemble.json (or the folder holding it; its members are run once over the training split and the result cached in --output-dir), or its members' predictions.npz files (their training-split probabilities, combined with the weights and temperature of an ensemble.json given beside them, or fitted on the files' validation split as evaluate.py fits them). Without --model the student is " + DEFAULT_STUDENT})
    distill_alpha: float = field(default=DISTILL_ALPHA, metadata={"help": "share of the loss on the teacher's soft targets (KL divergence at --distill-temperature, scaled by T^2); the rest is cross-entropy to the labels"})
    distill_temperature: float = field(default=DISTILL_TEMPERATURE, metadata={"help": "distillation temperature T: teacher and student probabilities are softened as softmax(log p / T)"})
    fail_at_epoch: int | None = field(default=None, metadata={"help": argparse.SUPPRESS})  # tests: inject a NaN loss
    stop_after_epoch: int | None = field(default=None, metadata={"help": "pause after this epoch's checkpoint, without the final predictions or a push: a fixed --epochs schedule longer than one sitting (a session, a preemptible machine) continues later with the same arguments and --resume latest, to the run never paused"})
    oom_above_batch: int | None = field(default=None, metadata={"help": argparse.SUPPRESS})  # tests: simulate CUDA out of memory
    # Filled in by train/finetune.py (not options) so training_args.json records what the run used.
    global_batch_size: int | None = field(default=None, init=False)
    effective_lr: float | None = field(default=None, init=False)
    train_class_counts: dict | None = field(default=None, init=False)  # images per class trained on (the card)
    batch_size_auto: list | None = field(default=None, init=False)  # --batch-size auto: the sizes tried, last fits
    # --time-limit: [epochs done, the schedule's length in epochs] at the start (the undecided horizon), at the
    # decision and at each re-plan (the card says whether its --epochs command trains this run's schedule)
    epochs_plans: list | None = field(default=None, init=False)


CHOICES = {"data_mode": ("auto", "device", "stream"), "report_to": ("none", *TRACKERS, "all"),
           "mixed_precision": (None, "no", "bf16", "fp16", "bf16-if-native"), "augment": ("auto", "cifar", "photo"),
           "auto_augment": ("randaugment", "trivialaugment", "none"), "lr_scale": ("auto", "sqrt", "linear", "none"),
           "class_weights": ("none", "balanced"), "sampler": ("shuffle", "balanced")}


def int_or_auto(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number or 'auto', got '{text}'") from None


def _parse_bool_flag(parser: argparse.ArgumentParser, name: str, f: dataclasses.Field) -> None:
    parser.add_argument(f"--{name}", dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                        help=f.metadata.get("help"))


def build_parser(description: str | None = None) -> argparse.ArgumentParser:
    import json

    parser = argparse.ArgumentParser(description=description, fromfile_prefix_chars="@",  # @args.txt: a sweep's best
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for f in dataclasses.fields(TrainConfig):
        if not f.init:  # derived during the run, not an option
            continue
        name = f.name.replace("_", "-")
        help_text = f.metadata.get("help")
        if f.type in ("bool",):
            _parse_bool_flag(parser, name, f)
            continue
        if f.type == "list[str]":
            parser.add_argument(f"--{name}", dest=f.name, nargs="+", default=None, help=help_text)
            continue
        kind = {"int | str | None": int_or_auto, "int": int, "float": float, "str": str, "int | None": int, "float | None": float,
                "str | None": str, "dict": json.loads}[f.type]
        parser.add_argument(f"--{name}", dest=f.name, type=kind, default=None, help=help_text)
    return parser


def recipe_config(args: argparse.Namespace | dict) -> TrainConfig:
    """Command-line values first, then the model's recipe, then the dataclass defaults."""
    given = {k: v for k, v in (vars(args) if isinstance(args, argparse.Namespace) else args).items() if v is not None}
    model = given.get("model", DEFAULT_STUDENT if given.get("teacher") else TrainConfig.model)
    # --batch-size auto starts from the recipe's batch (else the fallback below); train/finetune.py halves it to fit
    auto_batch = given.get("batch_size") == "auto" and given.pop("batch_size")
    values = {**RECIPES.get(model, {}), **given, "model": model}
    if "model_kwargs" in given:  # merge with the recipe's instead of replacing it
        values["model_kwargs"] = {**RECIPES.get(model, {}).get("model_kwargs", {}), **given["model_kwargs"]}
    if "lr" in given and "lr_base_size" not in given:  # a recipe's base batch describes the recipe's own rate
        values.pop("lr_base_size", None)
    cfg = TrainConfig(**values)
    cfg.output_dir = cfg.output_dir.format(model=cfg.model)
    for name, allowed in CHOICES.items():
        if getattr(cfg, name) not in allowed:
            raise SystemExit(f"--{name.replace('_', '-')} {getattr(cfg, name)}: choose one of {', '.join(map(str, allowed))}")
    if cfg.freeze not in ("none", "backbone") and not re.fullmatch(r"stages:[1-9]\d*", cfg.freeze):
        raise SystemExit(f"--freeze {cfg.freeze}: choose none, backbone or stages:N (N >= 1)")
    if not 0 <= cfg.distill_alpha <= 1 or cfg.distill_temperature <= 0:
        raise SystemExit("--distill-alpha must be in [0, 1] and --distill-temperature positive")
    if cfg.class_weights == "balanced" and cfg.sampler == "balanced":
        raise SystemExit("--class-weights balanced and --sampler balanced each correct the imbalance: choose one")
    if cfg.class_weights == "balanced" and cfg.teacher:
        raise SystemExit("--class-weights weighs the label loss, which a student hardly uses (--teacher): balance it "
                         "with --sampler balanced instead")
    if not 1 <= cfg.augment_magnitude <= 29:
        raise SystemExit(f"--augment-magnitude {cfg.augment_magnitude}: choose 1-29")
    if cfg.cutout < 0 or cfg.crop_padding < 0:
        raise SystemExit("--cutout and --crop-padding are sizes in pixels: give 0 (off) or more")
    if cfg.alternating_flip and not cfg.hflip:
        raise SystemExit("--alternating-flip decides how images are flipped: it needs flips (drop --no-hflip)")
    # Options a recipe-less model still needs.
    for name, fallback in dict(epochs=10, batch_size=128, lr=1e-3, lr_base_size=256, weight_decay=0.05,
                               warmup_epochs=1).items():
        if getattr(cfg, name) is None:
            setattr(cfg, name, fallback)
    if auto_batch:
        cfg.batch_size_auto = [cfg.batch_size]
    if cfg.time_limit is not None and not cfg.time_limit > 0:
        raise SystemExit(f"--time-limit {cfg.time_limit:g}: give a positive number of minutes")
    return cfg
