"""Wrong labels found and fixed, the whole way: label a pool (some labels planted wrong), export, train, evaluate
with --label-issues (cleanlab on the ensemble's probabilities), review exactly the flagged images in the
labeller's queue, correct them in labels.csv, export the corrected dataset."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import ENV, FINETUNE, REPO, run_in_process
from vision_ensemble.hub import results_markdown
from vision_ensemble.labeling.store import LabelingError, LabelStore, export_dataset, find_images, review_queue

CLASSES = ("red", "green", "blue")
EVALUATE = str(REPO / "evaluation" / "evaluate.py")


def colour_pool(pool, per_class: int = 60):
    """<class>/NNNN.png: noisy images whose dominant channel is the class, learnt in a few steps."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(CLASSES):
        (pool / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 120, (32, 32, 3))
            pixels[..., c] += rng.integers(60, 136)
            Image.fromarray(pixels.astype(np.uint8)).save(pool / name / f"{i:04d}.png")
    return pool


@pytest.fixture(scope="module")
def workflow(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("label-issues")
    pool = colour_pool(tmp / "pool")
    store = LabelStore(pool / "labels.csv")
    rng = np.random.default_rng(0)
    files = find_images(pool)
    planted = set(rng.choice(files, 15, replace=False).tolist())
    for name in files:  # the true class is the first path part
        true = name.split("/")[0]
        store.set(name, CLASSES[(CLASSES.index(true) + 1) % 3] if name in planted else true)
    dataset = export_dataset(pool, store.labels(), tmp / "dataset", "0.5,0.25,0.25").out_dir
    with open(dataset / "splits.csv", newline="") as f:
        split_of = {row["filename"]: row["split"] for row in csv.DictReader(f)}
    run = tmp / "run"
    run_in_process(FINETUNE, "--model", "test_resnet", "--img-size", "32", "--batch-size", "16", "--epochs", "4",
                   "--lr", "1e-2", "--mixup-alpha", "0", "--cutmix-alpha", "0", "--data-dir", dataset, "--cache-dir",
                   tmp / "cache", "--output-dir", run, "--no-data-check")
    results = tmp / "results"
    run_in_process(EVALUATE, "--models", run / "best", "--data-dir", dataset, "--cache-dir", tmp / "cache",
                   "--output-dir", results, "--label-issues")
    with open(results / "label_issues.csv", newline="") as f:
        issues = list(csv.DictReader(f))
    held_out = {name for name in planted if split_of[name] != "train"}
    return dict(pool=pool, store=store, planted=planted, held_out=held_out, issues=issues, results=results,
                dataset=dataset, tmp=tmp)


@pytest.mark.slow
def test_evaluate_flags_most_planted_wrong_labels_in_val_and_test(workflow):
    issues, held_out = workflow["issues"], workflow["held_out"]
    assert len(held_out) >= 5
    flagged = {"/".join(row["file"].split("/")[-2:]) for row in issues}  # <class>/NNNN.png under split/label/
    found = held_out & flagged
    assert len(found) >= 0.7 * len(held_out), (sorted(held_out), issues)
    assert len(flagged) <= 2 * len(held_out)  # few false alarms
    for row in issues:
        if "/".join(row["file"].split("/")[-2:]) in held_out:
            assert row["suggested_label"] == row["file"].split("/")[-2] != row["given_label"]  # the true class
    assert [float(r["score"]) for r in issues] == sorted((float(r["score"]) for r in issues), reverse=True)
    report = json.loads((workflow["results"] / "report.json").read_text())
    assert report["label_issues"]["val"] + report["label_issues"]["test"] == len(issues)
    assert {"balanced_accuracy", "macro_f1"} <= set(report["ensemble"])
    card = results_markdown(report)
    assert f"flags **{report['label_issues']['test']} of {report['test_images']} test labels**" in card
    assert "balanced accuracy" in card
    assert (workflow["results"] / "label_issues.png").stat().st_size > 10_000


@pytest.mark.slow
def test_review_queues_exactly_the_flagged_images_and_the_export_is_corrected(workflow):
    pool, issues = workflow["pool"], workflow["issues"]
    store = LabelStore(pool / "labels.csv")
    queue = review_queue(pool, workflow["results"] / "label_issues.csv", store)
    expected = ["/".join(row["file"].split("/")[-2:]) for row in issues]
    assert queue.order == expected
    first = queue.suggestions[expected[0]]
    assert (first.given, first.label) == (issues[0]["given_label"], issues[0]["suggested_label"])
    name, pixels = queue.next_image()
    assert name == expected[0] and pixels.shape == (32, 32, 3)
    for filename in expected[:2]:  # the reviewer presses the true class (keeps a right label), then stops
        store.set(filename, filename.split("/")[0])
    resumed = review_queue(pool, workflow["results"] / "label_issues.csv", LabelStore(pool / "labels.csv"))
    assert resumed.next_image()[0] == expected[2] and resumed.progress()[:2] == (2, len(expected))
    for filename in expected[2:]:
        resumed.store.set(filename, filename.split("/")[0])
    assert resumed.next_image() == (None, None)
    labels = LabelStore(pool / "labels.csv").labels()
    corrected = export_dataset(pool, labels, workflow["tmp"] / "corrected", "0.5,0.25,0.25")
    still_wrong = {f for f, label in labels.items() if label != f.split("/")[0]}
    assert still_wrong == workflow["planted"] - set(expected) and len(still_wrong) < len(workflow["planted"])
    assert sum(row[-1] for row in corrected.table()) == 180


@pytest.mark.slow
def test_review_of_files_outside_the_folder_is_a_one_line_error(workflow, tmp_path):
    issues = tmp_path / "label_issues.csv"
    issues.write_text("file,split,given_label,suggested_label,score\n/elsewhere/a.png,test,cat,dog,0.9\n")
    with pytest.raises(LabelingError, match="neither inside"):
        review_queue(workflow["pool"], issues, LabelStore(workflow["pool"] / "labels.csv"))
    result = subprocess.run([sys.executable, "-m", "vision_ensemble.labeler", str(workflow["pool"]), "--review",
                             str(issues)], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and result.stderr.strip().splitlines()[-1].startswith("error: /elsewhere/a.png")


@pytest.mark.slow
def test_the_live_labeller_shows_given_and_suggested_label_and_saves_the_correction(tmp_path):
    from gradio_client import Client

    from conftest import free_port, wait_for_server

    pool = colour_pool(tmp_path / "pool", per_class=2)
    store = LabelStore(pool / "labels.csv")
    for name in find_images(pool):
        store.set(name, name.split("/")[0])
    issues = tmp_path / "label_issues.csv"
    issues.write_text(f"file,split,given_label,suggested_label,score\n{pool / 'red/0001.png'},test,red,blue,0.93\n")
    port, log_file = free_port(), tmp_path / "labeller.log"
    with open(log_file, "w") as log:
        process = subprocess.Popen([sys.executable, "-m", "vision_ensemble.labeler", str(pool), "--review", str(issues),
                                    "--port", str(port)], cwd=REPO, env=ENV, stdout=log, stderr=subprocess.STDOUT)
    try:
        client = Client(wait_for_server(process, f"http://127.0.0.1:{port}/", log_file), verbose=False)
        _, caption, suggestion, progress, _ = client.predict(api_name="/first")  # the session keeps the State
        assert caption == "`red/0001.png`" and "0 / 1 labelled" in progress
        assert "Labelled **red**; the ensemble suggests **blue** (score 0.93" in suggestion
        _, caption, _, progress, _ = client.predict(api_name="/label")  # classes sorted: blue, green, red
        assert caption.startswith("**Every readable image is labelled.**") and "1 / 1 labelled" in progress
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert LabelStore(pool / "labels.csv").labels()["red/0001.png"] == "blue"
