"""Training: real `accelerate launch` runs of train/finetune.py on the real CIFAR-10 archive (small subsets)."""

from __future__ import annotations

import json
import sys

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

from conftest import FINETUNE, run, run_in_process, tiny_run_args
from vision_ensemble.config import recipe_config
from vision_ensemble.model import create_model, load_model_folder


@pytest.fixture(scope="module")
def two_process_run(cifar10, cifar10_archive, cache_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    # --multi_gpu, not --cpu: Accelerate's --cpu path starts one process without mpirun (finetune refuses it);
    # on a machine without GPUs --multi_gpu starts two gloo processes.
    result = run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
         "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", FINETUNE,
         *tiny_run_args(cifar10_archive, cache_root, out, "--ema", "--report-to", "tensorboard",
                        "--push-to-hub", "--hub-repo-id", "someone/tiny-cifar10")])
    (out / "stdout.txt").write_text(result.stdout)
    return out


@pytest.mark.slow
def test_two_process_run_writes_metrics_and_exports_best(two_process_run):
    rows = [json.loads(line) for line in (two_process_run / "metrics.jsonl").read_text().splitlines()]
    assert "2 process(es)" in (two_process_run / "stdout.txt").read_text()
    assert [r["epoch"] for r in rows] == [1, 2]
    # 101 val images over 2 processes: Accelerate pads one shard; gather_for_metrics must count each once.
    assert all(r["val_count"] == 101 for r in rows)
    assert all(0 <= r["val_top1"] <= r["val_top5"] <= 100 for r in rows)
    best = two_process_run / "best"
    assert {"model.safetensors", "config.json", "metrics.json", "training_args.json", "README.md"} <= \
        {p.name for p in best.iterdir()}
    assert not list(best.glob("*.bin")) and not list(best.glob("*.pth"))
    config = json.loads((best / "config.json").read_text())
    assert config["architecture"] == "test_resnet" and config["num_classes"] == 10
    assert config["label_names"][0] == "airplane"
    assert config["pretrained_cfg"]["input_size"] == [3, 32, 32] and config["pretrained_cfg"]["crop_pct"] == 1.0
    assert (two_process_run / "training_curves.png").stat().st_size > 10_000
    assert "test_resnet" in (best / "README.md").read_text()
    assert list((two_process_run / "vision_ensemble").glob("events.out.tfevents.*"))  # the tensorboard tracker


@pytest.mark.slow
def test_push_without_network_says_so_and_keeps_the_folder(two_process_run):
    stdout = (two_process_run / "stdout.txt").read_text()
    assert "not pushed: HF_HUB_OFFLINE=1 is set" in stdout
    assert "hf upload someone/tiny-cifar10" in stdout
    assert (two_process_run / "best" / "model.safetensors").exists()


@pytest.mark.slow
def test_exported_folder_reloads_with_timm_alone_and_same_logits(two_process_run):
    best = two_process_run / "best"
    model = timm.create_model(f"local-dir:{best}", pretrained=True).eval()
    # The same weights through the project's loader and through a hand-built model must agree.
    reference = timm.create_model("test_resnet", num_classes=10).eval()
    reference.load_state_dict(load_file(best / "model.safetensors"))
    ours, _, class_names = load_model_folder(best)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x))
        torch.testing.assert_close(ours(x), reference(x))
    assert len(class_names) == 10


@pytest.mark.slow
def test_interrupted_and_resumed_run_equals_an_uninterrupted_one(trained_run, cifar10_archive, cache_root,
                                                                  tmp_path):
    full, resumed = trained_run, tmp_path / "resumed"  # the shared run: the same arguments, never interrupted
    first = run_in_process(FINETUNE, *tiny_run_args(cifar10_archive, cache_root, resumed, "--stop-after-epoch", "1"))
    assert "stopping after epoch 1 of 2" in first.stdout
    assert not (resumed / "checkpoints" / "epoch_002").exists()
    assert not (resumed / "predictions.npz").exists()  # a paused run is not finished: nothing to ensemble yet
    second = run_in_process(FINETUNE, *tiny_run_args(cifar10_archive, cache_root, resumed, "--resume", "latest"))
    assert "resumed from" in second.stdout
    assert (resumed / "predictions.npz").exists()
    a = load_file(full / "checkpoints" / "epoch_002" / "model.safetensors")
    b = load_file(resumed / "checkpoints" / "epoch_002" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)
    epochs = [json.loads(line)["epoch"] for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]


@pytest.mark.slow
def test_lookahead_and_alternating_flips_resume_exactly(trained_run, cifar10_archive, cache_root, tmp_path):
    """The slow copy of --lookahead is in the checkpoint and the flips follow the seed and the epoch: a run stopped
    after epoch 1 and resumed holds the weights of one never stopped (and not those of the plain shared run)."""
    airbench_tricks = ("--lookahead", "--alternating-flip")
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    run_in_process(FINETUNE, *tiny_run_args(cifar10_archive, cache_root, full, *airbench_tricks))
    run_in_process(FINETUNE, *tiny_run_args(cifar10_archive, cache_root, resumed, *airbench_tricks,
                                            "--stop-after-epoch", "1"))
    run_in_process(FINETUNE, *tiny_run_args(cifar10_archive, cache_root, resumed, *airbench_tricks,
                                            "--resume", "latest"))
    a, b, plain = (load_file(run / "checkpoints" / "epoch_002" / "model.safetensors")
                   for run in (full, resumed, trained_run))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)
    assert not all(torch.allclose(a[key], plain[key]) for key in a)
    args = json.loads((full / "training_args.json").read_text())
    assert args["lookahead"] and args["alternating_flip"]


@pytest.mark.slow
def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_checkpoint(cifar10, cifar10_archive, cache_root, tmp_path):
    result = run_in_process(FINETUNE, *tiny_run_args(cifar10_archive, cache_root, tmp_path, "--fail-at-epoch", "2"),
                            check=False)
    assert result.returncode == 2
    assert "loss became nan in epoch 2" in result.stderr and "epoch_001" in result.stderr
    assert "Traceback" not in result.stderr
    good = tmp_path / "checkpoints" / "epoch_001"
    weights = load_file(good / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values() if t.is_floating_point())
    assert not (tmp_path / "checkpoints" / "epoch_002").exists()


def test_pretrained_path_loads_the_backbone_and_a_new_classifier(tmp_path):
    source = timm.create_model("test_resnet", num_classes=1000)
    torch.nn.init.normal_(source.fc.weight)
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, tmp_path / "backbone.safetensors")
    torch.save({"state_dict": source.state_dict()}, tmp_path / "backbone.pth")
    for name in ("backbone.safetensors", "backbone.pth"):
        model, _ = create_model(recipe_config({"model": "test_resnet", "pretrained_path": str(tmp_path / name)}), 7)
        state = model.state_dict()
        for key, value in source.state_dict().items():
            if not key.startswith("fc."):
                torch.testing.assert_close(state[key], value, msg=key)
        assert model.fc.weight.shape == (7, source.fc.in_features)


@pytest.mark.slow
def test_offline_pretrained_says_what_to_do_in_one_line(cifar10, cifar10_archive, cache_root, tmp_path):
    # --img-size 32: the session's decoded cache (the model's default 160 px would decode CIFAR-10 once more).
    result = run_in_process(FINETUNE, "--model", "test_resnet", "--pretrained", "--img-size", "32",
                            "--data-dir", cifar10_archive, "--cache-dir", cache_root, "--output-dir", tmp_path,
                            "--no-data-check", check=False)
    assert result.returncode == 2
    assert "could not download ImageNet weights" in result.stderr and "--no-pretrained" in result.stderr
    assert "Traceback" not in result.stderr


def test_help_lists_the_documented_flags():
    result = run_in_process(FINETUNE, "--help")
    assert result.returncode == 0
    for flag in ("--model", "--pretrained", "--no-pretrained", "--pretrained-path", "--img-size", "--epochs",
                 "--batch-size", "--lr", "--seed", "--data-dir", "--output-dir", "--resume", "--report-to",
                 "--push-to-hub", "--hub-repo-id", "--max-train-samples", "--max-eval-samples"):
        assert flag in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize("data_mode", ["device", "stream"])
def test_three_class_100x80_folder_trains_through_both_loaders(tmp_path, data_mode):
    from conftest import make_image_folder

    root = make_image_folder(tmp_path / "shapes", per_class=16, size=(80, 100), fmt="jpg")
    out = tmp_path / "run"
    run_in_process(FINETUNE, "--model", "test_resnet", "--img-size", "48", "--epochs", "2", "--batch-size", "16",
                   "--data-dir", root, "--cache-dir", tmp_path / "cache", "--output-dir", out, "--val-size", "0.25",
                   "--data-mode", data_mode, "--num-workers", "1", "--lr", "3e-3", "--max-eval-samples", "10")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["val_count"] for r in rows] == [10, 10]
    config = json.loads((out / "best" / "config.json").read_text())
    assert config["label_names"] == ["circle", "square", "stripes"] and config["num_classes"] == 3
    assert config["pretrained_cfg"]["input_size"] == [3, 48, 48]


@pytest.mark.slow
def test_compiled_run_saves_plain_timm_keys(cifar10, cifar10_archive, cache_root, tmp_path):
    """--compile wraps the model (keys gain '_orig_mod.'); checkpoints and the export must not."""
    # The wrapper is the same whatever the backend: aot_eager (Dynamo and AOTAutograd, no Inductor C++ code
    # generation) takes seconds where Inductor takes minutes on a CPU.
    run([sys.executable, FINETUNE, "--model", "test_resnet", "--img-size", "32", "--batch-size", "64", "--epochs", "1",
         "--data-dir", str(cifar10_archive), "--cache-dir", str(cache_root), "--output-dir", str(tmp_path),
         "--max-train-samples", "256", "--max-eval-samples", "64", "--compile", "--no-data-check"],
        TORCH_COMPILE_OVERRIDE_BACKENDS=">=0:aot_eager")
    for weights in (tmp_path / "best" / "model.safetensors", tmp_path / "checkpoints" / "epoch_001" / "model.safetensors"):
        keys = load_file(weights).keys()
        assert keys and not any("_orig_mod" in k for k in keys)
    timm.create_model(f"local-dir:{tmp_path / 'best'}", pretrained=True)


@pytest.mark.slow
def test_batch_size_auto_halves_until_a_step_fits_and_records_it(cifar10, cifar10_archive, cache_root, tmp_path):
    # test_resnet has no recipe: auto starts from the fallback 128; a step of more than 40 images "runs out of memory"
    result = run_in_process(FINETUNE, *tiny_run_args(cifar10_archive, cache_root, tmp_path, "--epochs", "1"),
                            "--batch-size", "auto", "--oom-above-batch", "40")
    args = json.loads((tmp_path / "training_args.json").read_text())
    assert args["batch_size_auto"] == [128, 64, 32] and args["batch_size"] == 32 == args["global_batch_size"]
    assert "global batch 32" in result.stdout
    assert [json.loads(line)["epoch"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1]


@pytest.mark.slow
def test_a_fixed_batch_that_does_not_fit_stops_with_one_line_saying_what_to_try(cifar10_archive, cache_root, tmp_path):
    result = run_in_process(FINETUNE, *tiny_run_args(cifar10_archive, cache_root, tmp_path),
                            "--oom-above-batch", "16", check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: out of memory at batch size 32 per process (test_resnet on cpu): try --batch-size auto (halves it "
        "until a step fits), a smaller --batch-size, --data-mode stream (the data leaves the GPU) or a smaller "
        "--img-size"]
    assert not (tmp_path / "checkpoints").exists()


def test_the_batch_probe_leaves_the_model_as_it_was():
    from accelerate import Accelerator

    from vision_ensemble.data import BatchTransform
    from vision_ensemble.training.batch_size import OutOfMemory, fit_batch_size

    cfg = recipe_config({"model": "test_resnet", "batch_size": "auto", "oom_above_batch": 1})
    model, data_config = create_model(cfg, 10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    transform = BatchTransform.from_data_config(data_config)
    accelerator = Accelerator(cpu=True)
    with pytest.raises(OutOfMemory, match="every batch size from 8 down to 2"):
        fit_batch_size(8, cfg, model, transform, transform, (32, 32, 3), 10, accelerator)
    cfg.oom_above_batch = None
    assert fit_batch_size(8, cfg, model, transform, transform, (32, 32, 3), 10, accelerator) == 8
    after = model.state_dict()
    assert any("running_mean" in k for k in after)  # BatchNorm statistics the probe's forward pass updated
    for key, value in before.items():
        torch.testing.assert_close(after[key], value, rtol=0, atol=0, msg=key)
    assert all(p.grad is None for p in model.parameters())
