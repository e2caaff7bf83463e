"""Publish and fetch: push a model folder to the Hugging Face Hub (`vision-ensemble push`), resolve a member to a
local folder, and generate model cards from the top-level `model_card.md`.

`model_card.md` is an ordinary Markdown page with one marked results section; a member's card (the
README.md of its Hub repo) is that page with the member's card metadata and numbers filled in.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

from .config import CIFAR10_NAME

MODEL_CARD = Path(__file__).resolve().parents[1] / "model_card.md"
SPACE_README = MODEL_CARD.parent / "README.md"  # the Space's card: its front matter configures the Space
SHIPPED_REPORT = MODEL_CARD.parent / "results" / "cifar10" / "report.json"  # the shipped ensemble's evaluation
RESULTS_START, RESULTS_END = "<!-- results:start -->", "<!-- results:end -->"
WEIGHT_PATTERNS = ["*.json", "*.safetensors", "README.md"]  # what a member needs; never pickles
CARD_TASK, CARD_LICENSE = "image-classification", "apache-2.0"
CIFAR10_HUB_DATASET = "uoft-cs/cifar10"  # what the cards' metadata names CIFAR-10 as (a dataset id on the Hub)


class HubError(RuntimeError):
    """A Hub operation that failed, with a one-line reason."""


def _reason(exc: BaseException) -> str:
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first}"[:300]


def dataset_name(data_dir: str) -> str:
    """A short name for `--data-dir`: 'cifar10' for cifar10, ../data/cifar10.tar.gz or a cifar10/ folder."""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", Path(str(data_dir)).name.split(".")[0]) or "data"


def default_repo_id(model: str, data_dir: str) -> str:
    return f"{model}-{dataset_name(data_dir)}"


def push_folder(folder: str | Path, repo_id: str, private: bool = False) -> str:
    """Create the repo if needed and upload the exported folder (safetensors only). Returns the repo URL."""
    from huggingface_hub import HfApi

    try:
        api = HfApi()
        repo = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(repo_id=repo.repo_id, folder_path=str(folder), allow_patterns=WEIGHT_PATTERNS,
                          commit_message="Upload model trained with vision_ensemble")
        return str(repo)
    except Exception as exc:  # offline, no token, no permission: all reported in one line
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        raise HubError(("HF_HUB_OFFLINE=1 is set; " if offline else "") + f"could not reach the Hub ({_reason(exc)})") from None


def main(argv=None) -> int:
    """`vision-ensemble push FOLDER REPO_ID`: publish a folder a run did not push (no network then, or no
    --push-to-hub), with the errors as one line and exit status 2."""
    parser = argparse.ArgumentParser(prog="vision-ensemble push",
                                     description="Push a model folder (a run's best/) to the Hugging Face Hub: its "
                                                 "JSON files, safetensors weights and README.md, never pickles.")
    parser.add_argument("folder", type=Path, help="the exported model folder, e.g. runs/seresnet50/best")
    parser.add_argument("repo_id", help="<owner>/<name> on the Hub; created when missing")
    parser.add_argument("--private", action="store_true", help="create the repo private")
    args = parser.parse_args(argv)
    if not (args.folder / "config.json").is_file():
        print(f"error: {args.folder} is not a model folder (no config.json in it)", file=sys.stderr)
        return 2
    try:
        print(f"pushed to {push_folder(args.folder, args.repo_id, args.private)}")
    except HubError as exc:
        print(f"error: not pushed: {exc}", file=sys.stderr)
        return 2
    return 0


def resolve_member(source: str, base_dir: str | Path | None = None) -> Path:
    """A member named by a local folder (absolute, or relative to `base_dir`) or a Hub repo id
    (optionally 'hf-hub:'-prefixed, '@revision'-suffixed), as a local folder holding config.json."""
    from huggingface_hub import snapshot_download

    source = str(source)
    for candidate in (Path(source).expanduser(), Path(base_dir or ".") / source):
        if candidate.is_dir():
            return candidate
    repo_id = source.removeprefix("hf-hub:")
    repo_id, _, revision = repo_id.partition("@")
    if repo_id.count("/") != 1 or repo_id.startswith((".", "/")):
        raise HubError(f"{source}: no such folder, and not a Hub repo id (owner/name)")
    try:
        return Path(snapshot_download(repo_id, revision=revision or None, allow_patterns=WEIGHT_PATTERNS))
    except Exception as exc:
        raise HubError(f"{source}: not a local folder, and the Hub download failed ({_reason(exc)})") from None


def resolve_manifest(spec: str | Path) -> Path:
    """An ensemble named by its ensemble.json, a folder holding one, or a Hub repo id holding one (downloaded
    with the report beside it), as the local ensemble.json path."""
    from huggingface_hub import hf_hub_download

    path = Path(spec).expanduser()
    if path.is_dir():
        path = path / "ensemble.json"
    if path.exists() or str(spec).count("/") != 1 or str(spec).startswith((".", "/", "~")):
        if not path.is_file():
            raise HubError(f"{spec}: no ensemble.json there (give an ensemble.json, a folder holding one, or a Hub "
                           "repo id)")
        return path
    try:
        manifest = Path(hf_hub_download(str(spec), "ensemble.json"))
    except Exception as exc:
        raise HubError(f"{spec}: not a local ensemble, and the Hub download failed ({_reason(exc)})") from None
    try:
        hf_hub_download(str(spec), "report.json")  # the evaluation beside it, when the repo has one
    except Exception:
        pass
    return manifest


def fill_results(card_text: str, results_markdown: str) -> str:
    """Replace the marked results section of a card with `results_markdown`."""
    start, end = card_text.find(RESULTS_START), card_text.find(RESULTS_END)
    if start < 0 or end < start:
        return card_text.rstrip() + f"\n\n{RESULTS_START}\n{results_markdown}\n{RESULTS_END}\n"
    return card_text[: start + len(RESULTS_START)] + "\n" + results_markdown.strip() + "\n" + card_text[end:]


def split_front_matter(text: str) -> tuple[str, str]:
    match = re.match(r"^---\n(.*?)\n---\n", text, flags=re.S)
    return (match.group(1), text[match.end():]) if match else ("", text)


def hub_repo_id(source: str, base_dir: str | Path | None = None) -> str | None:
    """The owner/name of a source given as a Hub repo id ('hf-hub:' prefix and '@revision' allowed); None when
    it is a local path (absolute, or relative to `base_dir`) or no repo id at all."""
    source = str(source)
    if Path(source).expanduser().exists() or (Path(base_dir or ".") / source).exists():
        return None
    repo_id = source.removeprefix("hf-hub:").partition("@")[0]
    return repo_id if repo_id.count("/") == 1 and not repo_id.startswith((".", "/")) and "*" not in repo_id else None


def hub_dataset(data_dir: str) -> tuple[str, str, bool]:
    """(id, display name, whether the id is a Hub dataset) of `--data-dir` for card metadata: CIFAR-10 (torchvision's
    download or a copy such as cifar10.tar.gz) is the Hub's uoft-cs/cifar10, a Hub id is itself, a local folder its
    name."""
    repo_id = hub_repo_id(data_dir)
    if repo_id:
        return repo_id, repo_id, True
    name = dataset_name(data_dir)
    return (CIFAR10_HUB_DATASET, "CIFAR-10", True) if name == CIFAR10_NAME else (name, name, False)


def pretrained_base_model(training_args: dict) -> str | None:
    """The Hub repo timm downloads for `--pretrained` (e.g. timm/seresnet50.a1_in1k); None from scratch or from
    `--pretrained-path` (a local file)."""
    from timm.models import get_pretrained_cfg

    model = str(training_args.get("model", ""))
    if not training_args.get("pretrained") or training_args.get("pretrained_path"):
        return None
    if model.startswith("hf-hub:"):
        return hub_repo_id(model)
    pretrained_cfg = get_pretrained_cfg(model, allow_unregistered=True)
    return getattr(pretrained_cfg, "hf_hub_id", None) or None


def card_data(model_name: str, data_dir: str, split: str, results: dict[str, tuple[str, float]],
              base_model: str | None = None, tags: tuple[str, ...] = ()):
    """The metadata the Hub reads from a card's front matter (a `ModelCardData`): `model-index` with `results`
    ({metric type: (display name, value)}, measured on `split` of `data_dir`: the evaluation widget), the dataset,
    `base_model` when fine-tuned from a Hub checkpoint, timm as the library, the pipeline tag, license and tags."""
    from huggingface_hub import EvalResult, ModelCardData

    dataset_id, dataset_title, on_hub = hub_dataset(data_dir)
    evals = [EvalResult(task_type=CARD_TASK, task_name="Image Classification", dataset_type=dataset_id,
                        dataset_name=dataset_title, dataset_split=split, metric_type=metric, metric_name=title,
                        metric_value=round(float(value), 4)) for metric, (title, value) in results.items()]
    return ModelCardData(model_name=model_name, eval_results=evals or None, datasets=[dataset_id] if on_hub else None,
                         base_model=base_model, library_name="timm", license=CARD_LICENSE, pipeline_tag=CARD_TASK,
                         tags=[CARD_TASK, "timm", "vision_ensemble", *tags])


def with_card_data(text: str, data) -> str:
    """`text` (a card; any front matter it has is replaced) under the front matter of `data` (a `ModelCardData`)."""
    from huggingface_hub import ModelCard

    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n" + split_front_matter(text)[1]))


#: The options a member's card repeats in its training command: enough to train it again, with those of
#: CARD_RECIPE_ARGS that differ from the model's recipe (e.g. a member trained with --cutout).
CARD_TRAINING_ARGS = ("model", "img_size", "epochs", "batch_size", "lr", "seed", "split_seed", "data_dir")
CARD_RECIPE_ARGS = ("opt", "momentum", "weight_decay", "warmup_epochs", "label_smoothing", "mixup_alpha",
                    "cutmix_alpha", "augment", "crop_padding", "cutout", "alternating_flip", "ema", "lookahead")


def training_command_args(training_args: dict) -> str:
    """The options of the member's training command, as `--name value`: CARD_TRAINING_ARGS, then the
    CARD_RECIPE_ARGS that differ from what `--model` alone would use now.  An option the member's
    training_args.json lacks did not exist when it trained: it ran at the option's default (off), which a recipe
    that has since turned it on must be told."""
    from .config import TrainConfig, recipe_config

    args = {**{k: getattr(TrainConfig, k) for k in CARD_RECIPE_ARGS if hasattr(TrainConfig, k)}, **training_args}
    recipe = vars(recipe_config({"model": args["model"]})) if args.get("model") else {}
    changed = [k for k in CARD_RECIPE_ARGS if k in args and k in recipe
               and args[k] != recipe[k] and not (k == "augment" and recipe[k] == "auto")]

    def option(name: str, value) -> str:  # switches as the parser takes them: --ema, --no-ema
        flag = name.replace("_", "-")
        return (f"--{flag}" if value else f"--no-{flag}") if isinstance(value, bool) else f"--{flag} {value}"

    return " ".join(option(k, args[k]) for k in (*CARD_TRAINING_ARGS, *changed)
                    if args.get(k) is not None)  # seed 0 too


def member_card(model_name: str, metrics: dict, training_args: dict, class_names: list[str],
                weights_note: str = "") -> str:
    """README.md for one exported member: model_card.md's text with this member's metadata and numbers;
    `weights_note`, a sentence on its weights (their precision, as train/fp16_members.py decided it), follows the
    training command."""
    _, body = split_front_matter(MODEL_CARD.read_text() if MODEL_CARD.exists() else "")
    rows = "\n".join(f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items())
    args = training_command_args(training_args)
    results = (f"### This member: `{model_name}`\n\nClasses: {', '.join(class_names)}\n\n"
               f"Validation metrics of the exported (best) epoch:\n\n| metric | value |\n| --- | --- |\n{rows}\n\n"
               f"Trained with `accelerate launch train/finetune.py {args}`"
               + (f", distilled from the ensemble `{' '.join(training_args['teacher'])}` (`--teacher`: "
                  f"alpha {training_args['distill_alpha']}, T {training_args['distill_temperature']}; fp16 weights)"
                  if training_args.get("teacher") else "")
               + f".{schedule_note(training_args)}{imbalance_note(training_args)}"
               + (f" {weights_note}" if weights_note else "") + "\n\n"
               f"```python\nimport timm\nmodel = timm.create_model(\"hf-hub:<this repo>\", pretrained=True).eval()\n```")
    measured = {"accuracy": ("Top-1 accuracy (%)", metrics["val_top1"]),
                "top_5_accuracy": ("Top-5 accuracy (%)", metrics["val_top5"])}
    data = card_data(model_name, training_args.get("data_dir", CIFAR10_NAME), "validation",
                     {k: v for k, v in measured.items() if v[1] is not None}, pretrained_base_model(training_args))
    return with_card_data(fill_results(body, results), data)


def ensemble_card(card_text: str, report: dict) -> str:
    """The ensemble's card (model_card.md) with `report`'s results: the marked section and its `model-index`."""
    e = report["ensemble"]
    data = card_data("vision-ensemble", report["data_dir"], "test",
                     {"accuracy": ("Top-1 accuracy (%)", e["top1"]),
                      "top_3_accuracy": ("Top-3 accuracy (%)", e["top3"]),
                      "ece": ("Expected calibration error (%)", e["ece_calibrated"] * 100)}, tags=("ensemble",))
    return with_card_data(fill_results(card_text, results_markdown(report)), data)


def space_models(readme: str | Path, manifest: str | Path) -> list[str]:
    """List the Hub repos of `manifest`'s members as `models:` in the Space README's front matter (the Hub links the
    Space to them); members that are local folders are not listed, and with none on the Hub (or no README) the file
    is left alone."""
    from huggingface_hub import SpaceCard

    members = json.loads(Path(manifest).read_text())["members"]
    models = [repo for repo in (hub_repo_id(m["source"], Path(manifest).parent) for m in members) if repo]
    if models and Path(readme).is_file():  # (SpaceCard.load would take a missing path for a repo id)
        card = SpaceCard.load(readme)
        card.data.models = models
        card.save(readme)
    return models


def imbalance_note(training_args: dict) -> str:
    """A sentence for the card when the training classes were imbalanced (largest/smallest >= the data check's
    warning ratio), naming the correction used, if any."""
    from .config import IMBALANCE_WARNING_RATIO

    counts = {name: n for name, n in (training_args.get("train_class_counts") or {}).items() if n}
    if not counts or max(counts.values()) < IMBALANCE_WARNING_RATIO * min(counts.values()):
        return ""
    big, small = max(counts, key=counts.get), min(counts, key=counts.get)
    fix = ("the loss weighted by inverse class frequency (`--class-weights balanced`)"
           if training_args.get("class_weights") == "balanced" else
           "class-balanced sampling (`--sampler balanced`)" if training_args.get("sampler") == "balanced" else
           "no correction: expect lower recall on the rare classes")
    return (f"\n\n**The training data was imbalanced**: {big} had {counts[big] / counts[small]:.1f}x the images of "
            f"{small} ({counts[big]:,} vs {counts[small]:,}); trained with {fix}.")


def schedule_note(training_args: dict) -> str:
    """A sentence for the card of a `--time-limit` run: whether its command (`--epochs N`) trains this run's
    schedule step for step, or the same recipe on a schedule that differed early on.  Until the decision the run
    follows the schedule of a long horizon (finetune.py's `undecided_horizon`); an N-epoch schedule has the same
    steps up to there when its warmup is the same length (warmups are capped at a tenth of the run) and the
    decision came inside it.  A re-plan moves the horizon: the schedules then differ up to the last re-plan.
    A run that predates the record of its plans (no `epochs_plans`) gets a sentence that says only what is known."""
    if training_args.get("time_limit") is None:
        return ""
    limit = f"`--time-limit {training_args['time_limit']:g}`"
    if "epochs_plans" not in training_args:
        return (f" Its length was chosen by {limit} in a run that predates the record of its plans: the command "
                f"trains the same recipe for {training_args['epochs']} epochs, on a schedule that may differ from this "
                f"run's in the epochs before it chose.")
    plans = training_args["epochs_plans"] or []
    if len(plans) < 2:  # not decided yet
        return ""
    (_, horizon), (decided_after, decided), *replans = plans
    epochs, warmup = plans[-1][1], training_args.get("warmup_epochs") or 0
    when = f"after epoch {decided_after}" if decided_after else "during epoch 1"
    if not replans and min(warmup, horizon / 10) == min(warmup, epochs / 10) and decided_after <= warmup:
        return (f" Its length was chosen by {limit} {when}, inside the warmup that every schedule of {epochs} "
                f"epochs shares: the command trains this run's schedule step for step.")
    history = f"{decided} epochs planned {when}" + "".join(f", re-planned to {n} after epoch {e}" for e, n in replans)
    differs = replans[-1][0] if replans else max(decided_after, 1)
    return (f" Its length was chosen by {limit} ({history}): the command trains the same recipe for {epochs} "
            f"epochs, on a schedule that differs from this run's in its first {differs} epoch(s).")


def results_markdown(report: dict) -> str:
    lines = ["| model | test top-1 (%) | test top-3 (%) | ECE (%) | weight |", "| --- | --- | --- | --- | --- |"]
    for m in report["members"]:
        lines.append(f"| `{m['source']}` | {m['top1']:.2f} | {m['top3']:.2f} | {m['ece'] * 100:.2f} | {m['weight']:.3f} |")
    e = report["ensemble"]
    lines.append(f"| **ensemble** (soft voting{', flip TTA' if report['tta_flip'] else ''}) | **{e['top1']:.2f}** | "
                 f"{e['top3']:.2f} | {e['ece_calibrated'] * 100:.2f} (T = {e['temperature']:.3f}; "
                 f"{e['ece_uncalibrated'] * 100:.2f} before) | |")
    if "balanced_accuracy" in e:
        lines.append(f"\nEvery class counted alike, the ensemble's balanced accuracy is {e['balanced_accuracy']:.2f}% "
                     f"and its macro-F1 {e['macro_f1']:.3f}.")
    if "student" in report:
        lines += student_markdown(report["student"])
    lines.append(f"\nMeasured on {report['test_images']:,} test images of `{report['data_dir']}` on {report['device']}, "
                 f"{report['date']}, with `{report['command']}`.")
    if "label_issues" in report:
        li = report["label_issues"]
        lines.append(f"\nThe ensemble flags **{li['test']} of {report['test_images']:,} test labels** as probably "
                     "wrong "
                     f"(confident learning, cleanlab; {li['val']} of the validation labels): every accuracy above is "
                     f"measured against these labels. They are listed in `{li['file']}` for review.")
    if "uncertainty" in report:
        lines += uncertainty_markdown(report["uncertainty"])
    if "conformal" in report:
        lines += conformal_markdown(report["conformal"])
    elif "conformal_skipped" in report:
        lines.append(f"\nNo conformal prediction sets: {report['conformal_skipped']}.")
    if "diagnostics" in report:
        lines += diagnostics_markdown(report["diagnostics"])
    return "\n".join(lines)


def weights_mb(source: str, root: Path) -> float | None:
    """Megabytes (10^6 bytes) of the safetensors weights of a member folder `source` (relative to `root`); None for a
    member that is not a folder there (a Hub repo)."""
    folder = root / source
    files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    return sum(f.stat().st_size for f in files) / 1e6 if files else None


def readme_results_markdown(report: dict, root: Path = MODEL_CARD.parent) -> str:
    """The README's results table, from an evaluation report: each member, the ensemble and the distilled student if
    any, with test top-1, ECE, the mean size of the conformal prediction sets, the batch-1 latency when the report
    measured it, and the size of the weights (the safetensors files under `root`); any number of members.
    `fill_results` writes it into the README's marked section."""
    e, conformal, student = report["ensemble"], report.get("conformal"), report.get("student")
    timed = student is not None and student.get("latency_ms") is not None
    columns = ["model", "test top-1 (%)", "ECE (%)"]
    columns += [f"{conformal['coverage']:.0%} prediction set (classes, mean)"] if conformal else []
    columns += ["latency (ms per image, 2 CPU threads)"] if timed else []
    columns += ["weights (MB)"]

    def row(name: str, top1: str, ece: str, set_size: str = "", latency: str = "", size: float | None = None) -> str:
        cells = [name, top1, ece] + ([set_size] if conformal else []) + ([latency] if timed else [])
        return "| " + " | ".join(cells + ["" if size is None else f"{size:.1f}"]) + " |"

    sizes = [weights_mb(m["source"], root) for m in report["members"]]
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += [row(f"`{Path(m['source']).name if size else m['source']}`", f"{m['top1']:.2f}", f"{m['ece'] * 100:.2f}",
                  size=size) for m, size in zip(report["members"], sizes)]
    count = len(sizes)
    lines.append(row(f"**ensemble** ({count} member{'s, soft voting' if count > 1 else ''}, calibrated)",
                     f"**{e['top1']:.2f}**", f"{e['ece_calibrated'] * 100:.2f}",
                     f"{conformal['test']['mean_set_size']:.2f}" if conformal else "",
                     f"{student['ensemble_latency_ms']:.1f}" if timed and student["ensemble_latency_ms"] else "",
                     None if None in sizes else sum(sizes)))
    if student:
        lines.append(row(f"**student** `{Path(student['source']).name}` (one network distilled from the ensemble)",
                         f"{student['top1']:.2f}", f"{student['ece_calibrated'] * 100:.2f}",
                         latency=f"{student['latency_ms']:.1f}" if timed else "",
                         size=weights_mb(student["source"], root)))
    notes = [f"{hub_dataset(report['data_dir'])[1]}'s test split, {report['test_images']:,} images"
             + (" (flip TTA: each prediction averages the image and its mirror)" if report["tta_flip"] else "")
             + f", evaluated on {report['device']} on {report['date']}. ECE is the expected calibration error: the "
             f"members' before calibration, the ensemble's after its temperature ({e['ece_uncalibrated'] * 100:.2f} "
             "before)" + (", the student's after its own" if student else "") + "."]
    if conformal:
        notes.append(f"The ensemble's {conformal['coverage']:.0%} prediction sets held the true class for "
                     f"{conformal['test']['coverage'] * 100:.1f}% of the test images.")
    notes.append("Weights: the safetensors files in the repository.")
    return "\n".join(lines) + "\n\n" + " ".join(notes)


def _ms(value: float | None) -> str:
    return "not measured" if value is None else f"{value:.1f} ms"


def student_markdown(s: dict) -> list[str]:
    """The distilled student's row of the results table, and how it compares with the ensemble."""
    return [f"| **student** `{s['source']}` (distilled from the ensemble) | **{s['top1']:.2f}** | {s['top3']:.2f} | "
            f"{s['ece_calibrated'] * 100:.2f} (T = {s['temperature']:.3f}; {s['ece_uncalibrated'] * 100:.2f} before) | |",
            f"\nThe student is one network trained on the ensemble's calibrated probabilities (`train/finetune.py "
            f"--teacher`): its top class is the ensemble's on **{s['agreement']:.1f}%** of the test images, its top-1 "
            f"{s['top1_gap_to_ensemble']:.2f} points under the ensemble's (best member {s['best_member_top1']:.2f}%). "
            f"One image at a time on 2 CPU threads (ONNX Runtime, as the Space serves it) it answers in "
            f"**{_ms(s['latency_ms'])}**, the ensemble in {_ms(s['ensemble_latency_ms'])}."]


def answering_markdown(report: dict | None, num_members: int) -> str:
    """Which model answers in the Space (the distilled student or the ensemble), its measured accuracy and latency."""
    if report is not None and report.get("served") == "student" and "student" in report:
        s = report["student"]
        return (f"**Answering: the distilled student `{s['source']}`**, one network learnt from the ensemble (test top-1 "
                f"{s['top1']:.2f}%, the ensemble's {report['ensemble']['top1']:.2f}%; {_ms(s['latency_ms'])} per image on "
                "2 CPU threads). Start the app with `--manifest owner/repo` for the full ensemble.")
    what = "the ensemble" if num_members > 1 else "one model"
    if report is None:
        return f"**Answering: {what} of {num_members} member(s)** (no evaluation report beside its manifest)."
    latency = report.get("student", {}).get("ensemble_latency_ms")
    return (f"**Answering: {what} of {num_members} member(s)** (test top-1 {report['ensemble']['top1']:.2f}%"
            + (f"; {_ms(latency)} per image on 2 CPU threads" if latency is not None else "") + ").")


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}%"


def uncertainty_markdown(u: dict) -> list[str]:
    """The uncertainty hint: its rule in one sentence, and how often it fires in and out of domain."""
    lines = ["\n### When the Space says it is unsure",
             f"\nThe Space flags a prediction when fewer than {u['min_agreement']:.0%} of the members agree with the "
             f"ensemble's top class, or when its calibrated probability is under **{u['min_confidence']:.3f}**: the "
             f"highest cut-off at which the validation predictions below it were right at most "
             f"{u['flagged_accuracy_target']:.0%} of the time. On the test split it fires on "
             f"**{u['test_fire_rate'] * 100:.1f}%** of the images (validation: {u['val_fire_rate'] * 100:.1f}%); "
             f"top-1 is {_percent(u['test_flagged_top1'])} on the flagged images and "
             f"{_percent(u['test_unflagged_top1'])} on the rest."]
    ood = u.get("out_of_domain") or []
    if ood:
        fired = sum(row["flagged"] for row in ood)
        lines.append(f"\nOn the out-of-domain example photos, none of them one of the ten classes, it fires on "
                     f"**{fired} of {len(ood)}** (large prediction sets are the honest answer there):\n\n"
                     "| photo | top class | probability | members agreeing | flagged | set size |\n"
                     "| --- | --- | --- | --- | --- | --- |")
        lines += [f"| `{r['image']}` | {r['top_class']} | {r['probability']:.2f} | {r['members_agreeing']} | "
                  f"{'yes' if r['flagged'] else '**no**'} | {r.get('set_size', 'n/a')} |" for r in ood]
    return lines


def conformal_markdown(c: dict) -> list[str]:
    """Prediction sets: what the coverage means, and how the sets did on the test split."""
    t = c["test"]
    lines = ["\n### Prediction sets with a coverage guarantee",
             f"\nBeside the top-3, the Space shows the classes it cannot rule out, e.g. \"cat or dog, with "
             f"{c['coverage']:.0%} coverage\": sets built this way hold the true class for {c['coverage']:.0%} of "
             f"images from the same distribution (split conformal prediction, {c['score'].upper()} score, cut-off "
             f"{c['cutoff']:.4f} calibrated on {c['validation_size']:,} validation images). On the test split:",
             f"\n- coverage **{t['coverage'] * 100:.1f}%**, mean set size **{t['mean_set_size']:.2f}** classes, "
             f"{t['singletons'] * 100:.1f}% single-class sets, {t['empty'] * 100:.1f}% empty sets",
             f"- mean set size where the uncertainty hint fires: {_size(c['mean_set_size_flagged'])}; where it does "
             f"not: {_size(c['mean_set_size_unflagged'])}",
             "\n| set size | test images | coverage |", "| --- | --- | --- |"]
    lines += [f"| {size} | {row['images']:,} | {row['coverage'] * 100:.1f}% |"
              for size, row in t["by_set_size"].items()]
    lines += ["\n| class | coverage |", "| --- | --- |"]
    lines += [f"| {name} | {_percent(None if v is None else v * 100)} |" for name, v in t["per_class_coverage"].items()]
    lines.append("\n`conformal_coverage.png` plots coverage and mean set size against the level asked for.")
    return lines


def _size(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def diagnostics_markdown(d: dict) -> list[str]:
    """`evaluate.py --diagnose`: top confusions, the error gallery, accuracy under FGSM and PGD."""
    lines = ["\n### Where it goes wrong", "\nMost frequent confusions on the test split (true -> predicted):\n",
             "| true | predicted | images |", "| --- | --- | --- |"]
    lines += [f"| {c['true']} | {c['predicted']} | {c['count']} |" for c in d["top_confusions"]]
    if d["gallery"]:
        lines.append(f"\n`{d['gallery']}` shows the {len(d['confident_errors'])} most confident errors with Grad-CAM "
                     f"of the highest-weight member, `{d['gallery_member']}`, for the true and the predicted class.")
    r = d["robustness"]
    header = " | ".join(f"{e}/255" if e else "clean" for e in r["epsilons_255"])
    lines += ["\n### Robustness to small pixel changes",
              f"\nTop-1 (%) on {r['samples']} test images under untargeted L-inf attacks in pixel space (Captum's "
              f"FGSM, and PGD: {r['pgd_steps']} steps of 2.5 epsilon / {r['pgd_steps']}), each network attacked through "
              f"its own preprocessing, the ensemble through its soft vote (`{d['robustness_plot']}`):\n",
              f"| attack | model | {header} |", "| --- | --- |" + " --- |" * len(r["epsilons_255"])]
    for attack in ("fgsm", "pgd"):
        for name, accuracies in r[attack].items():
            model = "**ensemble**" if name == "ensemble" else f"`{name}`"
            lines.append(f"| {attack.upper()} | {model} | " + " | ".join(f"{a:.1f}" for a in accuracies) + " |")
    return lines
