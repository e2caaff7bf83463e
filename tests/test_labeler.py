"""The labeller: the label store, the stratified export, the ensemble-ordered queue, the exported tree trained by
train/finetune.py, and the live app driven by keyboard in headless Chromium (killed mid-session, restarted)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import CHROMIUM, CHROMIUM_ARGS, REPO, free_port, make_image_folder, make_member, wait_for_server
from vision_ensemble.evaluation.ensemble import Ensemble
from vision_ensemble.images import load_rgb
from vision_ensemble.labeling.store import (LabelingError, LabelStore, assign_splits, export_dataset, find_images,
                                            parse_classes, rank_by_uncertainty, review_queue)
from vision_ensemble.model import Member

CLASSES = ("circle", "square", "stripes")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "OMP_NUM_THREADS": "1",
       "PYTHONWARNINGS": "ignore"}


def image_pool(root: Path, per_class: int, size=(32, 32)) -> Path:
    """An unlabelled folder: <class>/NNNN.png for each class (the true class is the first path part), plus a
    file that is not an image at all."""
    make_image_folder(root, CLASSES, per_class=per_class, size=size, splits=("pool",))
    (root / "pool" / "broken.png").write_text("not a png")
    return root / "pool"


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_label_store_keeps_label_order_last_label_wins_and_undo(tmp_path):
    store = LabelStore(tmp_path / "labels.csv")
    store.set("a.png", "cat")
    store.set("b.png", "dog")
    store.set("a.png", "dog")  # relabelled: its row moves to the end
    assert [(r["filename"], r["label"]) for r in read_rows(tmp_path / "labels.csv")] == [("b.png", "dog"), ("a.png", "dog")]
    assert LabelStore(tmp_path / "labels.csv").undo() == "a.png"  # undo reads the order back from the file
    reopened = LabelStore(tmp_path / "labels.csv")
    assert reopened.labels() == {"b.png": "dog"}
    assert reopened.undo() == "b.png" and reopened.undo() is None
    assert read_rows(tmp_path / "labels.csv") == [] and not list(tmp_path.glob(".*tmp"))


def test_a_review_begun_in_the_second_the_issues_file_was_written_counts(tmp_path):
    folder = make_image_folder(tmp_path / "pool", classes=("circle", "square"), per_class=2, splits=("",))
    issues = tmp_path / "label_issues.csv"
    issues.write_text("file,split,given_label,suggested_label,score\n"
                      f"{folder / 'circle' / '0000.png'},val,circle,square,0.9\n"
                      f"{folder / 'square' / '0001.png'},val,square,circle,0.8\n")
    written = time.time() - 0.002  # two milliseconds before the first label: the same second, nearly always
    os.utime(issues, (written, written))
    queue = review_queue(folder, issues, LabelStore(folder / "labels.csv"))
    queue.store.set("circle/0000.png", "circle")  # confirmed at once
    assert queue.is_done("circle/0000.png") and queue.next_image()[0] == "square/0001.png"


def test_bad_input_gets_one_line_errors(tmp_path):
    for text, message in (("cat", "at least two"), ("cat,../dog", "cannot be a folder name"), ("a,b,a", "more than once")):
        with pytest.raises(LabelingError, match=message):
            parse_classes(text)
    folder = image_pool(tmp_path, per_class=2)
    labels = {f: f.split("/")[0] for f in find_images(folder) if "/" in f}
    for ratios, message in (("0.8,0.1", "three shares"), ("0.5,0.6,-0.1", "three shares"), ("x,y,z", "three numbers")):
        with pytest.raises(LabelingError, match=message):
            assign_splits(labels, ratios)
    with pytest.raises(LabelingError, match="too few"):
        assign_splits(dict(list(labels.items())[:2]), "0.4,0.3,0.3")
    with pytest.raises(LabelingError, match="inside the image folder"):
        export_dataset(folder, labels, folder / "export", "0.5,0.5,0")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    with pytest.raises(LabelingError, match="not an earlier export"):
        export_dataset(folder, labels, tmp_path / "notes", "0.5,0.5,0")
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"


@pytest.mark.slow
def test_labeler_command_names_a_missing_folder_in_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "vision_ensemble.labeler", str(tmp_path / "missing"), "--classes", "a,b"],
                            cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and result.stderr.strip() == f"error: image folder not found: {tmp_path / 'missing'}"


def test_ensemble_orders_the_queue_least_confident_first(tmp_path):
    folder = image_pool(tmp_path, per_class=3)
    member = make_member(tmp_path / "member", 0, 32, classes=CLASSES, sharpen=5.0)
    ensemble = Ensemble([Member.load(str(member))])
    files = find_images(folder)
    order, suggestions, unreadable = rank_by_uncertainty(folder, files, ensemble)
    assert set(unreadable) == {"broken.png"} and order[-1] == "broken.png" and sorted(order) == files
    confidences = []
    for filename in order[:-1]:
        probs, _ = ensemble.predict(torch.from_numpy(load_rgb(folder / filename)).permute(2, 0, 1)[None])
        assert suggestions[filename].label == CLASSES[int(probs[0].argmax())]
        confidences.append(float(probs[0].max()))
    assert confidences == sorted(confidences) and len(set(np.round(confidences, 4))) > 1


def test_every_class_up_to_32_gets_its_own_key():
    from vision_ensemble.labeling.app import keyboard_head, shortcut_keys

    classes = [f"c{i}" for i in range(34)]
    keys = shortcut_keys(classes)
    assert keys[:10] == [[str(i)] for i in (1, 2, 3, 4, 5, 6, 7, 8, 9, 0)] and keys[10] == ["q"]
    flat = [k for ks in keys[:32] for k in ks]
    assert len(flat) == len(set(flat)) == 32 and not {"s", "u", "a", "b"} & set(flat) and keys[32:] == [[], []]
    head = keyboard_head(classes)
    assert '"0": "label-9"' in head and '"m": "label-31"' in head
    assert shortcut_keys(["cat", "dog"]) == [["1", "a"], ["2", "b"]]


@pytest.mark.slow
def test_classes_that_differ_from_the_manifests_are_refused(tmp_path):
    folder = image_pool(tmp_path, per_class=1)
    make_member(tmp_path / "member", 0, 32, classes=CLASSES)
    manifest = tmp_path / "ensemble.json"
    manifest.write_text(json.dumps({"members": [{"source": str(tmp_path / "member"), "weight": 1.0}]}))
    result = subprocess.run([sys.executable, "-m", "vision_ensemble.labeler", str(folder), "--classes", "cat,dog",
                             "--manifest", str(manifest)], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1] == ("error: --classes cat, dog differ from the --manifest ensemble's classes circle, "
                                     "square, stripes: its suggestions would name other classes (leave out --classes "
                                     "to use the ensemble's)")


@pytest.mark.slow
def test_cli_export_is_stratified_hard_linked_and_trains_one_epoch(tmp_path):
    folder = image_pool(tmp_path, per_class=10)
    store = LabelStore(folder / "labels.csv")
    for filename in find_images(folder):
        if filename != "broken.png":
            store.set(filename, filename.split("/")[0])
    out = tmp_path / "dataset"
    export = [sys.executable, "-m", "vision_ensemble.labeler", str(folder), "--export", str(out),
              "--ratios", "0.6,0.2,0.2", "--seed", "3"]
    printed = subprocess.run(export, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120, check=True).stdout
    assert "accelerate launch train/finetune.py --data-dir" in printed
    rows = read_rows(out / "splits.csv")
    counts = {(c, s): sum(r["label"] == c and r["split"] == s for r in rows) for c in CLASSES for s in ("train", "val", "test")}
    assert counts == {(c, s): n for c in CLASSES for s, n in (("train", 6), ("val", 2), ("test", 2))}
    for row in rows:
        original = folder / row["filename"]
        exported = out / row["split"] / row["label"] / row["filename"]
        assert os.path.samefile(original, exported) and original.stat().st_nlink == 2  # a hard link, not a move
    # The same seed gives the same split when exported again (the earlier export is replaced); another seed differs.
    export_dataset(folder, store.labels(), out, "0.6,0.2,0.2", seed=3)
    assert read_rows(out / "splits.csv") == rows
    other = assign_splits(store.labels(), "0.6,0.2,0.2", seed=4)
    assert other != {r["filename"]: r["split"] for r in rows}

    run_dir = tmp_path / "run"
    subprocess.run([sys.executable, str(REPO / "train" / "finetune.py"), "--model", "test_resnet", "--img-size", "32",
                    "--batch-size", "8", "--epochs", "1", "--data-dir", str(out), "--cache-dir", str(tmp_path / "cache"),
                    "--output-dir", str(run_dir)], cwd=REPO, env=ENV, capture_output=True, timeout=300, check=True)
    metrics = [line for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    assert len(metrics) == 1 and '"val_count": 6' in metrics[0]  # the exported val/, not a re-split of train
    config = json.loads((run_dir / "best" / "config.json").read_text())
    assert config["num_classes"] == 3 and config["label_names"] == list(CLASSES)


# --- the live app in a browser ---------------------------------------------------------------------------------

def start_labeler(folder: Path, log_file: Path, *extra):
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "vision_ensemble.labeler", str(folder), "--classes",
                                ",".join(CLASSES), "--port", str(port), *extra], cwd=REPO, env=ENV,  # later --classes wins
                               stdout=log_file.open("w"), stderr=subprocess.STDOUT)
    return process, wait_for_server(process, f"http://127.0.0.1:{port}/", log_file)


def progress_is(page, text: str) -> None:
    page.locator("#progress-text").get_by_text(text).wait_for(state="visible", timeout=20_000)


def shown_file(page) -> str:
    return page.locator("#caption code").inner_text()


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None and os.environ.get("CI") != "true", reason="Debian's chromium is not installed")
def test_keyboard_labelling_undo_kill_and_resume_in_chromium(tmp_path):
    from playwright.sync_api import sync_playwright

    folder = image_pool(tmp_path, per_class=3)  # 9 images + broken.png, which sorts first
    queue = [f for f in find_images(folder) if f != "broken.png"]
    labels_csv = folder / "labels.csv"
    process, url = start_labeler(folder, tmp_path / "first.log")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        try:
            page.goto(url)  # not "networkidle": the queue's event stream stays open
            progress_is(page, "0 / 9 labelled")
            assert shown_file(page) == queue[0]
            page.get_by_text("1 unreadable file(s), skipped").wait_for(state="visible")
            assert "broken.png" in page.locator("details").inner_text()
            for i, key in enumerate(["1", "2", "3"]):
                page.keyboard.press(key)
                progress_is(page, f"{i + 1} / 9 labelled")
            page.keyboard.press("Backspace")  # undo the third label: its image comes back
            progress_is(page, "2 / 9 labelled")
            assert shown_file(page) == queue[2]
            page.keyboard.press("2")
            progress_is(page, "3 / 9 labelled")
            page.keyboard.press("s")  # skip queue[3]
            page.locator("#caption code").get_by_text(queue[4]).wait_for(state="visible")
            page.keyboard.press("3")
            progress_is(page, "4 / 9 labelled")
            # Keys typed into the export tab's text box are text, not labels.
            page.get_by_role("tab", name="Export").click()
            page.get_by_label("Output folder").fill(str(tmp_path))
            page.get_by_label("Output folder").press_sequentially("/s1u2")
            assert page.get_by_label("Output folder").input_value() == f"{tmp_path}/s1u2"
            page.get_by_role("tab", name="Label").click()
            progress_is(page, "4 / 9 labelled")
        finally:
            process.send_signal(signal.SIGKILL)  # no shutdown handler runs: labels.csv must already be complete
            process.wait(timeout=30)
        expected = [(queue[0], "circle"), (queue[1], "square"), (queue[2], "square"), (queue[4], "stripes")]
        assert [(r["filename"], r["label"]) for r in read_rows(labels_csv)] == expected
        assert not list(folder.glob(".*tmp"))

        # Restarted with two classes: A and B are their keys too; the stripes label from before stays.
        process, url = start_labeler(folder, tmp_path / "second.log", "--classes", "circle,square")
        try:
            page.goto(url)  # not "networkidle": the queue's event stream stays open
            progress_is(page, "4 / 9 labelled")
            assert shown_file(page) == queue[3]  # the first unlabelled image: the one skipped before the kill
            page.keyboard.press("b")
            progress_is(page, "5 / 9 labelled")
            page.keyboard.press("u")
            progress_is(page, "4 / 9 labelled")
            page.keyboard.press("b")
            progress_is(page, "5 / 9 labelled")
            page.get_by_role("tab", name="Export").click()
            page.get_by_label("Output folder").fill(str(tmp_path / "export"))
            page.get_by_label("train share").fill("0.5")
            page.get_by_label("val share").fill("0.5")
            page.get_by_label("test share").fill("0")
            page.get_by_role("button", name="Export").click()
            page.get_by_text("Exported 5 images").wait_for(state="visible", timeout=20_000)
        finally:
            browser.close()
            process.terminate()
            process.wait(timeout=30)
    exported = read_rows(tmp_path / "export" / "splits.csv")
    assert sorted((r["filename"], r["label"]) for r in exported) == sorted([*expected, (queue[3], "square")])
    assert {r["split"] for r in exported} == {"train", "val"}
    assert not (tmp_path / "s1u2").exists()
