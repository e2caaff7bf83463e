"""Model cards carry the Hub's metadata: model-index (the evaluation widget), datasets, base_model, library and
pipeline tag; the Space README lists its published members. Read back with huggingface_hub's own parsers."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict

import pytest
from huggingface_hub import ModelCard, SpaceCard, metadata_eval_result

from conftest import REPO, make_member, run_in_process, write_manifest
from vision_ensemble.config import RECIPES, recipe_config
from vision_ensemble.hub import MODEL_CARD, card_data, ensemble_card, member_card, space_models, with_card_data

EVALUATE = str(REPO / "evaluation" / "evaluate.py")


def model_index(card: ModelCard) -> list[dict]:
    return card.data.to_dict()["model-index"]


def expected_model_index(name: str, dataset: tuple[str, str], split: str, metrics: list[tuple[str, str, float]]):
    """The model-index huggingface_hub's metadata_eval_result writes for the same numbers, one metric at a time."""
    entries = [metadata_eval_result(model_pretty_name=name, task_pretty_name="Image Classification",
                                    task_id="image-classification", metrics_pretty_name=title, metrics_id=metric,
                                    metrics_value=value, dataset_pretty_name=dataset[1], dataset_id=dataset[0],
                                    dataset_split=split)["model-index"][0] for metric, title, value in metrics]
    results = entries[0]["results"]
    results[0]["metrics"] = [m for e in entries for m in e["results"][0]["metrics"]]
    for m in results[0]["metrics"]:
        m.pop("verified")  # ours are self-reported, without the field
    return [{"name": name, "results": results}]


@pytest.mark.slow
def test_trained_members_card_reports_its_best_epoch_to_the_hub(trained_run):
    best = trained_run / "best"
    card = ModelCard.load(best / "README.md")
    metrics = json.loads((best / "metrics.json").read_text())
    assert card.data.library_name == "timm" and card.data.pipeline_tag == "image-classification"
    assert card.data.license == "apache-2.0" and {"image-classification", "timm"} <= set(card.data.tags)
    assert card.data.datasets == ["uoft-cs/cifar10"]  # the JPEG copy of CIFAR-10 is named as the Hub's dataset
    assert card.data.base_model is None  # trained from scratch
    assert model_index(card) == expected_model_index(
        "test_resnet", ("uoft-cs/cifar10", "CIFAR-10"), "validation",
        [("accuracy", "Top-1 accuracy (%)", round(metrics["val_top1"], 4)),
         ("top_5_accuracy", "Top-5 accuracy (%)", round(metrics["val_top5"], 4))])
    (top1, top5) = card.data.eval_results
    assert top1.metric_value == pytest.approx(metrics["val_top1"], abs=1e-4) and top1.dataset_split == "validation"
    assert top5.metric_value == pytest.approx(metrics["val_top5"], abs=1e-4)
    assert "### This member: `test_resnet`" in card.text and "Intended use and limitations" in card.text


@pytest.mark.parametrize("args, base_model", [
    ({"model": "test_resnet", "pretrained": True}, "timm/test_resnet.r160_in1k"),  # what timm downloads
    ({"model": "seresnet50.a1_in1k", "pretrained": True}, "timm/seresnet50.a1_in1k"),
    ({"model": "hf-hub:someone/my-backbone@v2", "pretrained": True}, "someone/my-backbone"),
    ({"model": "test_resnet", "pretrained": True, "pretrained_path": "backbone.safetensors"}, None),  # a local file
    ({"model": "test_resnet", "pretrained": False}, None)])
def test_base_model_is_the_pretrained_checkpoints_hub_repo(args, base_model, tmp_path):
    text = member_card(args["model"], {"epoch": 1, "val_top1": 50.0, "val_top5": 90.0},
                       {**args, "data_dir": str(tmp_path / "shapes")}, ["circle", "square"])
    card = ModelCard(text)
    assert card.data.base_model == base_model
    # A local folder is no Hub dataset: named in the model-index, not listed under datasets.
    assert card.data.datasets is None and card.data.eval_results[0].dataset_type == "shapes"


def test_a_member_card_repeats_the_training_command_seed_0_included(tmp_path):
    # A member's training_args.json: every option of the run, as finetune.py writes it
    args = asdict(recipe_config({"model": "airbench_s", "epochs": 31, "seed": 0, "data_dir": "cifar10.tar.gz",
                                 "time_limit": 60.0}))
    text = member_card("airbench_s", {"epoch": 31, "val_top1": 90.3, "val_top5": 99.6}, args, ["cat", "dog"])
    assert ("`accelerate launch train/finetune.py --model airbench_s --img-size 32 --epochs 31 --batch-size 1024 "
            "--lr 1.5 --seed 0 --split-seed 0 --data-dir cifar10.tar.gz`") in text
    # An option the recipe does not set joins the command; the recipe's own values do not.
    text = member_card("airbench_s", {"epoch": 31, "val_top1": 90.3, "val_top5": 99.6},
                       {**args, "crop_padding": 4, "cutout": 12, "label_smoothing": 0.2}, ["cat", "dog"])
    assert "--data-dir cifar10.tar.gz --crop-padding 4 --cutout 12`" in text
    # Switches as the parser takes them (argparse.BooleanOptionalAction), not "--lookahead True".
    text = member_card("airbench_s", {"epoch": 31, "val_top1": 90.3, "val_top5": 99.6},
                       {**args, "alternating_flip": True, "lookahead": True, "ema": False}, ["cat", "dog"])
    assert "--data-dir cifar10.tar.gz --alternating-flip --lookahead`" in text


@pytest.mark.parametrize("plans, says", [
    # decided once, after epoch 2 of airbench's 2-epoch warmup, on a count of at least ten warmups
    ([[0, 20], [2, 31]], "inside the warmup that every schedule of 31 epochs shares: the command trains this run's "
                         "schedule step for step."),
    # re-planned as the machine's pace changed: the horizons differ up to the last re-plan
    ([[0, 20], [2, 30], [9, 28], [14, 26]], "(30 epochs planned after epoch 2, re-planned to 28 after epoch 9, "
     "re-planned to 26 after epoch 14): the command trains the same recipe for 26 epochs, on a schedule that differs "
     "from this run's in its first 14 epoch(s)."),
    # fewer than ten warmups fit: the warmup is capped shorter than the one the run began on
    ([[0, 20], [2, 13]], "the command trains the same recipe for 13 epochs, on a schedule that differs from this "
                         "run's in its first 2 epoch(s)."),
    ([[0, 20]], None)])  # not decided yet (a best epoch exported before the decision)
def test_a_time_limited_members_card_says_whether_its_command_trains_the_same_schedule(plans, says):
    args = asdict(recipe_config({"model": "airbench_s", "seed": 0, "data_dir": "cifar10.tar.gz", "time_limit": 60.0}))
    args["epochs"], args["epochs_plans"] = plans[-1][1], plans  # as finetune.py records them
    text = member_card("airbench_s", {"epoch": 12, "val_top1": 90.3, "val_top5": 99.6}, args, ["cat", "dog"])
    assert f"--epochs {plans[-1][1]} --batch-size" in text
    if says is None:
        assert "chosen by" not in text
    else:
        assert "--data-dir cifar10.tar.gz`. Its length was chosen by `--time-limit 60` " in text and says in text


def test_a_time_limited_member_older_than_its_plans_record_says_its_schedule_may_differ():
    """The shipped seeds trained before training_args.json recorded `epochs_plans`: their cards must not imply that
    `--epochs N` trains their schedule step for step."""
    args = asdict(recipe_config({"model": "airbench_s", "seed": 1, "data_dir": "cifar10.tar.gz", "time_limit": 60.0}))
    args["epochs"] = 26
    del args["epochs_plans"]  # it predates the record
    text = member_card("airbench_s", {"epoch": 26, "val_top1": 89.7, "val_top5": 99.6}, args, ["cat", "dog"])
    assert ("--data-dir cifar10.tar.gz`. Its length was chosen by `--time-limit 60` in a run that predates the record "
            "of its plans: the command trains the same recipe for 26 epochs, on a schedule that may differ") in text
    assert "step for step" not in text


def test_a_card_turns_off_what_a_recipe_turned_on_after_the_member_trained(monkeypatch):
    """A member trained before an option existed ran without it: once its recipe turns it on, the card's command
    must turn it off to train that member again."""
    args = asdict(recipe_config({"model": "airbench_s", "epochs": 31, "seed": 0, "data_dir": "cifar10.tar.gz"}))
    del args["lookahead"]  # it predates the option
    monkeypatch.setitem(RECIPES, "airbench_s", {**RECIPES["airbench_s"], "lookahead": True})
    text = member_card("airbench_s", {"epoch": 31, "val_top1": 90.3, "val_top5": 99.6}, args, ["cat", "dog"])
    assert "--data-dir cifar10.tar.gz --no-lookahead`" in text


def test_student_cards_use_the_same_builder(tmp_path):
    """What another card (a distilled student) calls with its own numbers."""
    data = card_data("student-test_resnet", "uoft-cs/cifar10", "test", {"accuracy": ("Top-1 accuracy (%)", 81.23456)},
                     base_model="someone/teacher", tags=("distillation",))
    card = ModelCard(with_card_data("---\nlicense: mit\n---\n# A student\n", data))
    assert card.text == "# A student\n" and card.data.license == "apache-2.0"
    assert card.data.eval_results[0].metric_value == 81.2346 and card.data.eval_results[0].dataset_split == "test"
    assert card.data.datasets == ["uoft-cs/cifar10"] and "distillation" in card.data.tags


@pytest.mark.slow
def test_ensemble_card_carries_the_evaluations_model_index(trained_run, tmp_path):
    out = tmp_path / "results"
    result = run_in_process(EVALUATE, "--predictions", trained_run / "predictions.npz", "--output-dir", out)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    card = ModelCard(ensemble_card(MODEL_CARD.read_text(), report))
    e = report["ensemble"]
    assert model_index(card) == expected_model_index(
        "vision-ensemble", ("uoft-cs/cifar10", "CIFAR-10"), "test",
        [("accuracy", "Top-1 accuracy (%)", round(e["top1"], 4)),
         ("top_3_accuracy", "Top-3 accuracy (%)", round(e["top3"], 4)),
         ("ece", "Expected calibration error (%)", round(e["ece_calibrated"] * 100, 4))])
    assert card.data.datasets == ["uoft-cs/cifar10"] and card.data.library_name == "timm"
    assert "ensemble" in card.data.tags
    assert f"**{e['top1']:.2f}**" in card.text and "Not measured yet" not in card.text
    again = ModelCard(ensemble_card(str(card), report))  # updating an updated card replaces, never appends
    assert str(again) == str(card)


def test_space_readme_lists_the_published_members_once(tmp_path):
    readme = tmp_path / "README.md"
    shutil.copy(REPO / "README.md", readme)
    original = readme.read_text()
    local = write_manifest(tmp_path, [make_member(tmp_path / "member_a", 0, 32)])
    assert space_models(readme, local) == [] and readme.read_text() == original  # local folders: untouched

    manifest = json.loads(local.read_text())
    manifest["members"] = [{**manifest["members"][0], "source": source}
                           for source in ("someone/seresnet50-cifar10", "hf-hub:someone/vit-cifar10@main", "member_a")]
    published = tmp_path / "published.json"
    published.write_text(json.dumps(manifest))
    assert space_models(readme, published) == ["someone/seresnet50-cifar10", "someone/vit-cifar10"]
    card = SpaceCard.load(readme)
    assert card.data.models == ["someone/seresnet50-cifar10", "someone/vit-cifar10"]
    before = SpaceCard(original).data.to_dict()
    assert {k: v for k, v in card.data.to_dict().items() if k != "models"} == before  # title, sdk, app_file... kept
    assert card.text == SpaceCard(original).text
    space_models(readme, published)
    assert SpaceCard.load(readme).data.models == card.data.models  # listed once, not appended again
