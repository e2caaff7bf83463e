"""The Space: the real app on a free localhost port, driven through gradio_client and headless Chromium."""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import EXAMPLES, REPO, _script, browser_page, needs_chromium, running_app
from vision_ensemble.evaluation.ensemble import Ensemble
from vision_ensemble.evaluation.thresholds import optimize, read_scores_csv
from vision_ensemble.images import load_rgb

pytestmark = pytest.mark.slow  # a live app.py on a local port


@pytest.fixture(scope="module")
def app(ensemble_dir, tmp_path_factory):
    with running_app(ensemble_dir / "ensemble.json", tmp_path_factory.mktemp("log") / "app.log") as client_and_url:
        yield client_and_url


def test_api_names_are_stable(app):
    client, _ = app
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert {"/classify", "/inspect_csv", "/optimize_threshold"} <= set(endpoints)


def test_classify_gives_the_evaluation_codes_top3(app, ensemble_dir):
    from gradio_client import handle_file

    client, _ = app
    image = EXAMPLES / "cifar10_cat.png"
    first = client.predict(handle_file(str(image)), api_name="/classify")
    second = client.predict(handle_file(str(image)), api_name="/classify")
    label, members, timing = first
    assert len(label["confidences"]) == 3
    assert all(0 <= c["confidence"] <= 1 for c in label["confidences"])
    assert label == second[0]
    reference = Ensemble.from_manifest(ensemble_dir / "ensemble.json")
    probs, _ = reference.predict(torch.from_numpy(load_rgb(image, size=reference.source_size)).permute(2, 0, 1)[None])
    top3 = np.argsort(-probs[0])[:3]
    assert [c["label"] for c in label["confidences"]] == [reference.class_names[i] for i in top3]
    # The app serves through ONNX Runtime; evaluation runs eager PyTorch: same numbers to float precision.
    np.testing.assert_allclose([c["confidence"] for c in label["confidences"]], probs[0, top3], atol=1e-5)
    assert len(members["data"]) == 2 and "ms" in timing


def test_large_photo_with_alpha_is_classified(app, tmp_path):
    from gradio_client import handle_file

    client, _ = app
    photo = Image.open(EXAMPLES / "china.jpg").convert("RGBA")
    photo.save(tmp_path / "photo.png")
    label, _, _ = client.predict(handle_file(str(tmp_path / "photo.png")), api_name="/classify")
    assert len(label["confidences"]) == 3


def test_threshold_tab_gives_the_librarys_answer(app):
    from gradio_client import handle_file

    client, _ = app
    csv = str(EXAMPLES / "classifier_scores.csv")
    label_col, score_col, positive, info = client.predict(handle_file(csv), api_name="/inspect_csv")
    assert label_col["value"] == "label" and score_col["value"] == "score" and "285 rows" in info
    out = client.predict(handle_file(csv), "label", "score", "(auto)", "mcc", 1, 1, 1, 0.9, 0.9,
                         api_name="/optimize_threshold")
    summary, table, pr, roc, curves, results_csv = out
    expected = optimize(read_scores_csv(csv), "mcc")
    assert f"**{expected.threshold:.6g}**" in summary
    rows = {r[0]: r for r in table["data"]}
    assert rows["tp"][2] == expected.at_optimum["confusion_matrix"]["tp"]
    assert rows["mcc"][2] == pytest.approx(expected.value, abs=1e-4)
    assert Path(results_csv).read_text().startswith("threshold,tp,fp,fn,tn")
    assert all(p is not None for p in (pr, roc, curves))


def bad_inputs(tmp_path):
    (tmp_path / "not_an_image.png").write_text("label,score\n1,0.5\n")
    buffer = io.BytesIO()
    Image.new("RGB", (200, 200), (9, 9, 9)).save(buffer, "JPEG")
    (tmp_path / "truncated.jpg").write_bytes(buffer.getvalue()[:400])
    Image.new("L", (10_000, 10_000)).save(tmp_path / "bomb.png")
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "columns.csv").write_text("name,value\na,1\nb,2\n")
    (tmp_path / "one_class.csv").write_text("label,score\n1,0.2\n1,0.4\n")
    return [("/classify", "not_an_image.png", "not an image file"),
            ("/classify", "truncated.jpg", "corrupt or truncated"),
            ("/classify", "bomb.png", "limit is"),
            ("/inspect_csv", "empty.csv", "empty"),
            ("/optimize_threshold", "columns.csv", "no recognisable label column"),
            ("/optimize_threshold", "one_class.csv", "one class only")]


def test_bad_inputs_get_plain_errors_and_the_server_keeps_serving(app, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    client, _ = app
    for endpoint, name, message in bad_inputs(tmp_path):
        args = [handle_file(str(tmp_path / name))]
        if endpoint == "/optimize_threshold":
            args += [None, None, "(auto)", "f1", 1, 1, 1, 0.9, 0.9]
        with pytest.raises(AppError, match=message):
            client.predict(*args, api_name=endpoint)
    label, _, _ = client.predict(handle_file(str(EXAMPLES / "cifar10_ship.png")), api_name="/classify")
    assert len(label["confidences"]) == 3


def test_without_weights_the_app_starts_and_the_threshold_tab_works(app_without_weights):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    url, log_file, _ = app_without_weights
    client = Client(url, verbose=False)
    with pytest.raises(AppError, match="No model weights are loaded"):
        client.predict(handle_file(str(EXAMPLES / "cifar10_cat.png")), api_name="/classify")
    out = client.predict(handle_file(str(EXAMPLES / "classifier_scores.csv")), "label", "score", "(auto)", "f1",
                         1, 1, 1, 0.9, 0.9, api_name="/optimize_threshold")
    assert "Best threshold" in out[0]
    assert "no ensemble loaded" in log_file.read_text()


@pytest.mark.skipif(not sys.platform.startswith("linux") or "PYTHONMALLOC" in os.environ,
                    reason="glibc's malloc; a PYTHONMALLOC already set is kept")
def test_the_server_runs_with_python_objects_in_malloc(app_without_weights):
    url, _, pid = app_without_weights
    assert httpx.get(url + "api/health", timeout=30).status_code == 503  # the process started is the one serving
    assert b"PYTHONMALLOC=malloc" in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")  # restarted with it


@needs_chromium
def test_headless_chromium_renders_every_tab(app, tmp_path):
    _, url = app
    shots = Path(os.environ.get("SCREENSHOT_DIR", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    with browser_page(url) as page:
        page.get_by_role("tab", name="Classify").click()
        page.locator(".gallery-item, button.gallery-item, [data-testid='examples'] button").nth(2).click()
        # An example loads through a server call; a click before it lands classifies nothing (an error). On a busy
        # CI machine it landed after the click.
        page.locator("[data-testid='image'] img").first.wait_for(state="visible", timeout=30_000)
        page.get_by_role("button", name="Classify").click()
        page.get_by_text("members agree").first.wait_for(state="visible", timeout=30_000)
        page.get_by_role("tab", name="Threshold optimization").click()
        page.get_by_text("classifier_scores.csv").first.click()
        page.get_by_text("285 rows, columns: label, score").first.wait_for(state="visible", timeout=20_000)
        page.get_by_role("button", name="Find the best threshold").click()
        page.get_by_text("Best threshold").first.wait_for(state="visible", timeout=30_000)
        for tab, expected in (("Classify", "members agree"), ("Threshold optimization", "Best threshold"),
                              ("Model card", "Intended use and limitations")):
            page.get_by_role("tab", name=tab).click()
            page.get_by_text(expected).first.wait_for(state="visible", timeout=20_000)
            page.wait_for_timeout(500)  # let plots finish drawing
            path = shots / f"tab_{tab.split()[0].lower()}.png"
            page.screenshot(path=str(path), full_page=True)
            pixels = np.asarray(Image.open(path).convert("L"), dtype=float)
            assert pixels.std() > 10  # a rendered page, not a blank or error screen
        assert "Error" not in page.title()


def test_threshold_figures_are_drawn_one_call_at_a_time():
    """matplotlib is not thread-safe: two threshold calls at once failed once in the soak hour (BENCHMARKS.md)."""
    from vision_ensemble.serving.admission import Admission
    from vision_ensemble.serving.metrics import Metrics

    admission = Admission(slots=2, queue=16, waiting_per_client=1)
    demo = _script(str(REPO / "app.py")).build_demo(None, "no ensemble", None, admission, Metrics(admission, None))
    limits = {fn.api_name: fn.concurrency_limit for fn in demo.fns.values()}
    assert limits["optimize_threshold"] == 1 and limits["classify"] > 1
