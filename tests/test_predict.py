"""`vision-ensemble predict` and `vision_ensemble.load`: a folder with subfolders and bad files, a CSV list, a zip,
a glob; every file a row (the unusable ones with their reason); the numbers those of a live server's
`/api/predict` for the same files; a killed run resumed to the same table; the Python API's records the CLI's."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from conftest import ENV, EXAMPLES, REPO, make_image_folder, start_app

CLI = [str(Path(sys.executable).parent / "vision-ensemble"), "predict"]
BAD = {"broken.jpg": "corrupt or truncated", "notes.txt": "not an image file", "empty.png": "the file is empty"}


def predict(*args, check=True) -> subprocess.CompletedProcess:
    result = subprocess.run([*CLI, *map(str, args)], env=ENV, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def ensemble(ensemble_dir, tmp_path_factory) -> Path:
    """The Space tests' two tiny members, with a prediction-set rule (labels of probability >= 0.1)."""
    root = tmp_path_factory.mktemp("ensemble")
    for member in ("member_a", "member_b"):
        shutil.copytree(ensemble_dir / member, root / member)
    manifest = json.loads((ensemble_dir / "ensemble.json").read_text())
    manifest["conformal"] = {"score": "lac", "cutoff": 0.9, "coverage": 0.9, "validation_size": 100}
    (root / "ensemble.json").write_text(json.dumps(manifest))
    return root


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Real photos and CIFAR images in a folder tree, with a truncated JPEG, a text file, an empty file and
    hidden entries beside them."""
    root = tmp_path_factory.mktemp("photos") / "photos"
    make_image_folder(root / "shapes", per_class=4, splits=("train",), fmt="jpg")
    for example in sorted(EXAMPLES.glob("*.jpg")) + sorted(EXAMPLES.glob("cifar10_*.png")):
        shutil.copy(example, root / example.name)
    (root / "broken.jpg").write_bytes((EXAMPLES / "china.jpg").read_bytes()[:3000])
    (root / "notes.txt").write_text("not a picture")
    (root / "empty.png").write_bytes(b"")
    (root / ".DS_Store").write_bytes(b"\0" * 10)
    (root / ".thumbnails").mkdir()
    shutil.copy(EXAMPLES / "flower.jpg", root / ".thumbnails" / "flower.jpg")
    return root


def visible_files(root: Path) -> list[str]:
    return sorted(str(p) for p in root.rglob("*") if p.is_file() and not any(part.startswith(".")
                                                                               for part in p.relative_to(root).parts))


@pytest.fixture(scope="module")
def folder_table(photos, ensemble, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("out") / "predictions.csv"
    return out, predict(photos, "--manifest", ensemble, "--output", out, "--probabilities")


def test_a_folder_gets_a_row_per_file_and_the_bad_ones_say_why(photos, folder_table, ensemble):
    out, result = folder_table
    rows = read_csv(out)
    assert sorted(r["path"] for r in rows) == visible_files(photos)  # hidden ones left out, nothing else
    assert "2 hidden file(s) left out" in result.stderr and "could not be classified" in result.stderr
    for name, reason in BAD.items():
        row = next(r for r in rows if r["path"].endswith(name))
        assert reason in row["error"] and row["top1"] == ""
    good = [r for r in rows if not r["error"]]
    assert len(good) == len(rows) - len(BAD) and f"classified {len(good)} of {len(rows)}" in result.stderr
    classes = json.loads((ensemble / "ensemble.json").read_text())["class_names"]
    for row in good:
        probs = np.array([float(row[f"probability_{c}"]) for c in classes])
        assert probs.sum() == pytest.approx(1, abs=1e-5)
        assert row["top1"] == classes[int(probs.argmax())]
        assert float(row["top1_probability"]) >= float(row["top2_probability"]) >= float(row["top3_probability"])
        assert row["top1"] in row["prediction_set"].split("|") and row["uncertain"] in ("True", "False")
        assert 0 <= float(row["agreement"]) <= 1


def test_the_numbers_are_the_json_apis(photos, folder_table, ensemble, tmp_path):
    out, _ = folder_table
    rows = {r["path"]: r for r in read_csv(out) if not r["error"]}
    process, url = start_app(ensemble / "ensemble.json", tmp_path / "app.log")
    try:
        with httpx.Client(base_url=url, timeout=60) as http:
            for path in sorted(rows)[::3] + [str(photos / "china.jpg")]:
                answer = http.post("/api/predict", files={"image": Path(path).read_bytes()}, data={"top_k": "3"})
                assert answer.status_code == 200, answer.text
                body, row = answer.json(), rows[path]
                for k, top in enumerate(body["top_k"], 1):
                    assert row[f"top{k}"] == top["label"]
                    assert float(row[f"top{k}_probability"]) == pytest.approx(top["probability"], abs=1e-5)
                assert row["prediction_set"].split("|") == body["prediction_set"]
                assert row["uncertain"] == str(body["uncertain"])
                assert float(row["agreement"]) == np.mean([m["agrees"] for m in body["members"]])
            refused = http.post("/api/predict", files={"image": (photos / "notes.txt").read_bytes()})
            assert refused.status_code == 415 and "not an image file" in refused.json()["error"]
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_a_csv_list_a_zip_and_a_glob_read_the_same_images(photos, folder_table, ensemble, tmp_path):
    out, _ = folder_table
    by_path = {r["path"]: r for r in read_csv(out)}
    images = sorted(p for p in by_path if not by_path[p]["error"] and "shapes" in p)
    listing = tmp_path / "list.csv"
    listing.write_text("label,file\n" + "".join(f"x,{p}\n" for p in images))
    archive = tmp_path / "photos.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for p in images:
            z.write(p, Path(p).relative_to(photos))
        z.writestr("__MACOSX/._photo.jpg", b"\0")  # macOS resource forks are hidden files
    sources = ((listing, lambda p: p), (archive, lambda p: f"{archive}:{Path(p).relative_to(photos)}"),
               (f"{photos}/shapes/**/*.jpg", lambda p: p))
    for n, (source, name_of) in enumerate(sources):
        table = tmp_path / f"table{n}.jsonl"
        predict(source, "--manifest", ensemble, "--output", table, "--workers", "1")
        got = {r["path"]: r for r in map(json.loads, table.read_text().splitlines())}
        assert sorted(got) == sorted(name_of(p) for p in images)
        for p in images:
            assert got[name_of(p)]["top1"] == by_path[p]["top1"]
            assert got[name_of(p)]["top1_probability"] == pytest.approx(float(by_path[p]["top1_probability"]), abs=1e-5)
            assert got[name_of(p)]["prediction_set"] == by_path[p]["prediction_set"].split("|")


def test_a_killed_run_resumes_to_the_same_table(photos, folder_table, ensemble, tmp_path):
    out, _ = folder_table
    many = tmp_path / "many"
    for i in range(12):  # 12 copies of the tree: enough batches of 2 to kill the run part-way
        shutil.copytree(photos, many / f"copy{i:02d}", ignore=shutil.ignore_patterns(".*"))
    table = tmp_path / "resumed.parquet"
    args = [many, "--manifest", ensemble, "--output", table, "--batch-size", "2", "--workers", "0",
            "--probabilities"]
    process = subprocess.Popen([*CLI, *map(str, args)], env=ENV, cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    stream = table.with_name(table.name + ".partial.jsonl")
    deadline = time.monotonic() + 240
    while (not stream.exists() or stream.read_text().count("\n") < 20) and time.monotonic() < deadline:
        assert process.poll() is None, "the run ended before it could be killed"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    written = stream.read_text().count("\n")
    assert 20 <= written < len(visible_files(many)) and not table.exists()
    refused = predict(*args, check=False)
    assert refused.returncode == 2 and "--resume" in refused.stderr
    resumed = predict(*args, "--resume")
    assert f"{written:,} already in" in resumed.stderr
    whole = tmp_path / "whole.parquet"
    predict(*args[:4], whole, *args[5:], "--threads", "1")  # the networks' thread count: speed, not answers
    got, expected = pd.read_parquet(table), pd.read_parquet(whole)
    assert list(got["path"]) == list(expected["path"]) == visible_files(many) and not stream.exists()
    assert list(got["top1"]) == list(expected["top1"]) and list(got["error"]) == list(expected["error"])
    numbers = [c for c in got.columns if "probability" in c]
    np.testing.assert_allclose(got[numbers].to_numpy(float), expected[numbers].to_numpy(float), atol=1e-5)


def test_the_python_api_returns_the_clis_records(photos, folder_table, ensemble):
    """`load(...).predict` gives the CLI's records; `predict_inputs` with 2 workers decodes a short list in
    BATCHES_PER_WORKER batches a worker (not one batch, which one worker would decode alone), in order."""
    out, _ = folder_table
    rows = {r["path"]: r for r in read_csv(out)}
    code = ("from vision_ensemble import load\n"
            "from vision_ensemble.serving.batch import list_inputs\n"
            f"classifier = load({str(ensemble)!r}, runtime='onnx')\n"
            f"records = classifier.predict([{str(photos / 'china.jpg')!r}, {str(photos / 'broken.jpg')!r}])\n"
            f"batches = list(classifier.predict_inputs(list_inputs({str(photos)!r}), workers=2))\n"
            "import json, sys; json.dump([records, batches], sys.stdout)\n")
    result = subprocess.run([sys.executable, "-c", code], env=ENV, cwd=REPO, capture_output=True, text=True,
                            timeout=300, check=True)
    (china, broken), batches = json.loads(result.stdout)
    files = visible_files(photos)
    assert len(files) > 8 and len(batches) == math.ceil(len(files) / math.ceil(len(files) / 8))
    assert [r["path"] for batch in batches for r in batch] == files
    assert [r["top1"] for batch in batches for r in batch] == [rows[f]["top1"] or None for f in files]
    row = rows[str(photos / "china.jpg")]
    assert china["top1"] == row["top1"] and china["error"] is None
    assert china["top1_probability"] == pytest.approx(float(row["top1_probability"]), abs=1e-5)
    assert china["prediction_set"] == row["prediction_set"].split("|")
    assert "corrupt or truncated" in broken["error"] and broken["top1"] is None


def test_mistakes_are_one_line_and_nothing_classified_is_a_failure(photos, ensemble, tmp_path):
    missing = predict(tmp_path / "nope", "--manifest", ensemble, "--output", tmp_path / "a.csv", check=False)
    assert missing.returncode == 2 and "no such file or folder" in missing.stderr
    manifest = predict(photos, "--manifest", tmp_path, "--output", tmp_path / "b.csv", check=False)
    assert manifest.returncode == 2 and "no ensemble.json" in manifest.stderr
    fmt = predict(photos, "--manifest", ensemble, "--output", tmp_path / "c.xlsx", check=False)
    assert fmt.returncode == 2 and ".csv, .jsonl or .parquet" in fmt.stderr
    threads = predict(photos, "--manifest", ensemble, "--output", tmp_path / "e.csv", "--threads", "0", check=False)
    assert threads.returncode == 2 and "--threads 0: give at least 1" in threads.stderr
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in BAD:
        shutil.copy(photos / name, bad / name)
    none = predict(bad, "--manifest", ensemble, "--output", tmp_path / "d.csv", check=False)
    assert none.returncode == 1 and "classified 0 of 3" in none.stderr
    assert len(read_csv(tmp_path / "d.csv")) == 3
