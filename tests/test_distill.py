"""Distillation: MixUp/CutMix targets against timm's own, the loss, the teacher's targets from an ensemble.json
and from predictions files, a tiny student distilled from two 1-epoch members on a CIFAR-10 subset, and the
Space serving the student by default."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from timm.data import Mixup
from timm.data.mixup import one_hot

from conftest import ENV, EXAMPLES, FINETUNE, REPO, free_port, run_in_process, tiny_run_args, wait_for_server
from vision_ensemble.config import TrainConfig
from vision_ensemble.data import subset_indices
from vision_ensemble.training.distill import Distillation

EVALUATE = str(REPO / "evaluation" / "evaluate.py")


@pytest.mark.parametrize("mode", ["batch", "pair", "elem"])
@pytest.mark.parametrize("mixup_alpha,cutmix_alpha,prob", [(0.8, 0.0, 1.0), (0.0, 1.0, 1.0), (0.8, 1.0, 0.5)])
def test_mixed_teacher_targets_are_what_timm_mixup_makes_of_labels(mode, mixup_alpha, cutmix_alpha, prob):
    """A teacher whose targets are the smoothed one-hot labels must be mixed exactly as timm mixes the labels:
    same images (same lambda, same box), same targets in both halves."""
    classes, smoothing = 10, 0.1
    cfg = TrainConfig(mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, mixup_prob=prob, label_smoothing=smoothing,
                      distill_temperature=1.0)
    labels_all = torch.arange(40) % classes
    off = smoothing / classes
    teacher = one_hot(labels_all, classes, on_value=1 - smoothing + off, off_value=off)
    distillation = Distillation(teacher, cfg, classes)
    distillation.mixup.mode = mode
    reference = Mixup(mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, prob=prob, label_smoothing=smoothing,
                      num_classes=classes, mode=mode)
    images = torch.rand(16, 3, 12, 12)
    for trial in range(8):
        indices = torch.randperm(40, generator=torch.Generator().manual_seed(trial))[:16]
        np.random.seed(trial)
        expected_images, expected = reference(images.clone(), labels_all[indices])
        np.random.seed(trial)
        mixed_images, (hard, soft) = distillation.mix(images.clone(), labels_all[indices], indices)
        assert torch.equal(mixed_images, expected_images)
        torch.testing.assert_close(hard, expected)
        torch.testing.assert_close(soft, expected)


def test_loss_is_zero_only_where_the_student_matches_the_softened_teacher():
    torch.manual_seed(0)
    teacher = torch.softmax(torch.randn(6, 10) * 3, dim=1)
    labels = teacher.argmax(dim=1)
    cfg = TrainConfig(mixup_alpha=0, cutmix_alpha=0, label_smoothing=0.0, distill_alpha=1.0, distill_temperature=4.0)
    distillation = Distillation(teacher, cfg, 10)
    indices = torch.arange(6)
    _, targets = distillation.mix(torch.zeros(6, 3, 4, 4), labels, indices)
    logits = (teacher.log() + 5.0).requires_grad_()  # the teacher's logits, shifted: the same distribution
    loss = distillation.loss(logits, targets)
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-5) and logits.grad.abs().max() < 1e-6
    other = distillation.loss(torch.randn(6, 10), targets)
    assert other.item() > 0.01
    # T^2 scaling: the soft term's gradient keeps its size as T grows (Hinton et al.), within a factor of 2 here
    grads = []
    for temperature in (2.0, 8.0):
        cfg.distill_temperature = temperature
        d = Distillation(teacher, cfg, 10)
        student = torch.zeros(6, 10, requires_grad=True)
        d.loss(student, d.mix(torch.zeros(6, 3, 4, 4), labels, indices)[1]).backward()
        grads.append(student.grad.norm().item())
    assert 0.5 < grads[1] / grads[0] < 2


# --- real runs: two 1-epoch members, a distilled student and a student of the labels alone --------------------

def tiny_args(archive, cache_root, out, *extra):
    return ["--model", "test_resnet", "--img-size", "32", "--batch-size", "32", "--epochs", "1", "--data-dir",
            str(archive), "--cache-dir", str(cache_root), "--output-dir", str(out), "--max-train-samples", "1500",
            "--max-eval-samples", "400", *extra]


@pytest.fixture(scope="module")
def members(cifar10, cifar10_archive, cache_root, tmp_path_factory):
    """Two 1-epoch members (32 and 48 px, a higher rate than the students: not the students' own runs)."""
    root = tmp_path_factory.mktemp("members")
    for name, size in (("a", "32"), ("b", "48")):
        run_in_process(FINETUNE, *tiny_args(cifar10_archive, cache_root, root / name, "--img-size", size,
                                            "--lr", "3e-3", "--hub-repo-id", f"team/member-{name}"))
    run_in_process(EVALUATE, "--models", str(root / "a" / "best"), str(root / "b" / "best"), "--data-dir",
                   str(cifar10_archive), "--cache-dir", str(cache_root), "--max-eval-samples", "400", "--output-dir",
                   str(root / "results"))
    return root


@pytest.mark.slow
def test_teacher_targets_from_an_ensemble_json_equal_those_from_the_runs_files(members, cifar10, tmp_path):
    from vision_ensemble.evaluation.teacher import TeacherError, teacher_probabilities

    train = subset_indices(len(cifar10.train), 1500, 0)  # the images the runs trained on
    manifest = members / "results" / "ensemble.json"
    files = [str(members / name / "predictions.npz") for name in ("a", "b")]
    ran = teacher_probabilities([str(manifest)], cifar10, train[:300], tmp_path / "targets.npz")
    assert (tmp_path / "targets.npz").exists()
    np.testing.assert_allclose(teacher_probabilities([str(manifest)], cifar10, train[:300], tmp_path / "targets.npz"),
                               ran)  # the cache
    fitted = teacher_probabilities(files, cifar10, train[:300], tmp_path / "unused.npz")
    # The same manifest, its members named as the files name them (the GPU box's --predictions evaluation).
    renamed = json.loads(manifest.read_text())
    for entry, name in zip(renamed["members"], ("a", "b")):
        entry["source"] = f"team/member-{name}"
    (tmp_path / "ensemble.json").write_text(json.dumps(renamed))
    combined = teacher_probabilities([str(tmp_path / "ensemble.json"), *files], cifar10, train[:300], tmp_path / "x.npz")
    np.testing.assert_allclose(combined, ran, atol=2e-3)  # the files hold float16
    np.testing.assert_allclose(fitted, ran, atol=2e-3)  # evaluate.py's fit on the same validation probabilities
    assert ran.shape == (300, 10) and np.allclose(ran.sum(axis=1), 1, atol=1e-5)
    with pytest.raises(TeacherError, match="training images"):  # an image the members' runs never predicted
        teacher_probabilities(files, cifar10, np.setdiff1d(np.arange(len(cifar10.train)), train)[:5], tmp_path / "y.npz")


@pytest.fixture(scope="module")
def students(members, cifar10_archive, cache_root, tmp_path_factory):
    """The same student run twice with the same budget and seed: distilled from the members, and on labels alone."""
    root = tmp_path_factory.mktemp("students")
    teacher = [str(members / name / "predictions.npz") for name in ("a", "b")]
    run_in_process(FINETUNE, *tiny_args(cifar10_archive, cache_root, root / "distilled", "--teacher", *teacher))
    run_in_process(FINETUNE, *tiny_args(cifar10_archive, cache_root, root / "labels", "--hub-repo-id",
                                        "team/labels-only"))
    return root


@pytest.mark.slow
def test_distilled_student_agrees_with_the_teacher_more_than_a_label_trained_one(members, students, tmp_path):
    teacher = [str(members / name / "predictions.npz") for name in ("a", "b")]
    agreement = {}
    for name in ("distilled", "labels"):
        out = tmp_path / name
        run_in_process(EVALUATE, "--predictions", *teacher, "--student", str(students / name / "predictions.npz"),
                       "--output-dir", str(out))
        report = json.loads((out / "report.json").read_text())
        agreement[name] = report["student"]["agreement"]
        assert json.loads((out / "student" / "report.json").read_text())["served"] == "student"
    print(f"top class shared with the teacher on the test images (%): {agreement}")
    assert agreement["distilled"] > agreement["labels"], agreement
    best = students / "distilled" / "best"
    weights = load_file(str(best / "model.safetensors"))  # the shipped student is fp16
    assert {t.dtype for t in weights.values() if t.is_floating_point()} == {torch.float16}
    assert "distilled from the ensemble" in (best / "README.md").read_text()
    args = json.loads((best / "training_args.json").read_text())
    assert args["teacher"] == teacher and args["distill_alpha"] == TrainConfig.distill_alpha


@pytest.fixture(scope="module")
def student_folder(members, students, cifar10_archive, cache_root, tmp_path_factory):
    """evaluate.py --models ... --student: the folder the Space serves by default."""
    out = tmp_path_factory.mktemp("evaluated")
    run_in_process(EVALUATE, "--models", members / "a" / "best", members / "b" / "best", "--student",
                   students / "distilled" / "best", "--data-dir", cifar10_archive, "--cache-dir", cache_root,
                   "--max-eval-samples", "400", "--output-dir", out)
    return out


@pytest.mark.slow
def test_evaluate_reports_the_student_and_writes_a_one_member_manifest(student_folder, cifar10):
    from vision_ensemble.evaluation.ensemble import Ensemble
    from vision_ensemble.evaluation.predictions import evaluation_batch
    from vision_ensemble.model import Member

    s = json.loads((student_folder / "report.json").read_text())["student"]
    assert s["latency_ms"] > 0 and s["ensemble_latency_ms"] > 0 and 0 <= s["agreement"] <= 100
    ensemble = Ensemble.from_manifest(student_folder / "student")
    assert [m.source for m in ensemble.members] == ["model"] and ensemble.temperature == pytest.approx(s["temperature"])
    images, labels = evaluation_batch(cifar10.test, 400, 0)
    probs, _ = ensemble.predict(images)
    assert np.mean(probs.argmax(axis=1) == labels) * 100 == pytest.approx(s["top1"])
    raw = Member.load(str(student_folder / "student" / "model")).probabilities(images).numpy()
    assert np.array_equal(raw.argmax(axis=1), probs.argmax(axis=1))  # temperature scaling keeps the top class


@pytest.mark.slow
def test_app_without_manifest_serves_the_folder_in_models_cifar10(student_folder, tmp_path):
    """`python app.py` from a checkout whose models/cifar10/ holds a student's folder (its ensemble.json and report):
    /api/predict and the Classify tab answer with it."""
    import httpx
    from gradio_client import Client, handle_file

    shutil.copytree(student_folder / "student", tmp_path / "models" / "cifar10")
    port, log_file = free_port(), tmp_path / "app.log"
    process = subprocess.Popen([sys.executable, str(REPO / "app.py"), "--host", "127.0.0.1", "--port", str(port)],
                               cwd=tmp_path, env={**ENV, "GRADIO_ANALYTICS_ENABLED": "False"},
                               stdout=log_file.open("w"), stderr=subprocess.STDOUT)
    try:
        url = wait_for_server(process, f"http://127.0.0.1:{port}/", log_file)
        with httpx.Client(base_url=url, timeout=60) as http:
            with open(EXAMPLES / "cifar10_cat.png", "rb") as f:
                answer = http.post("/api/predict", files={"image": ("cat.png", f)}).json()
            config = http.get("/config").text
        assert [m["source"] for m in answer["members"]] == ["model"] and len(answer["top_k"]) == 3
        assert "Answering: the distilled student" in config
        label, members, _ = Client(url, verbose=False).predict(handle_file(str(EXAMPLES / "cifar10_cat.png")),
                                                              api_name="/classify")
        assert [c["label"] for c in label["confidences"]] == [c["label"] for c in answer["top_k"]]
        assert [row[0] for row in members["data"]] == ["model"]
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.mark.slow
def test_student_of_an_ensemble_json_resumes_exactly(members, cifar10_archive, cache_root, tmp_path):
    """The teacher run once, cached in the run folder and read back on --resume; the resumed student's weights
    equal an uninterrupted run's (Mixup's draws for the teacher's targets come back with the RNG states)."""
    teacher = ["--teacher", str(members / "results" / "ensemble.json")]
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    first_full = run_in_process(FINETUNE, *tiny_run_args(cifar10_archive, cache_root, full, *teacher))
    assert "teacher on the training split" in first_full.stderr and (full / "teacher_targets.npz").exists()
    run_in_process(FINETUNE, *tiny_run_args(cifar10_archive, cache_root, resumed, *teacher, "--stop-after-epoch", "1"))
    second = run_in_process(FINETUNE, *tiny_run_args(cifar10_archive, cache_root, resumed, *teacher, "--resume",
                                                     "latest"))
    assert "resumed from" in second.stdout and "teacher on the training split" not in second.stderr  # from the cache
    a = load_file(full / "checkpoints" / "epoch_002" / "model.safetensors")
    b = load_file(resumed / "checkpoints" / "epoch_002" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)
