"""Fine-tuning strategies: --freeze, frozen BatchNorm, --layer-decay, the lr scaled to the global batch, and a real
photo fine-tuning run of train/finetune.py."""

from __future__ import annotations

import json

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from timm.scheduler import create_scheduler_v2

from conftest import FINETUNE, make_image_folder, run_in_process
from vision_ensemble.config import RECIPES, recipe_config
from vision_ensemble.training.finetuning import create_optimizer, freeze, keep_frozen_norms_in_eval, scaled_lr
from vision_ensemble.training.lookahead import Lookahead


def optimizer_params(optimizer) -> set[int]:
    return {id(p) for group in optimizer.param_groups for p in group["params"]}


def train_step(model, optimizer):
    keep_frozen_norms_in_eval(model.train())
    loss = F.cross_entropy(model(torch.randn(8, 3, 32, 32)), torch.randint(0, 5, (8,)))
    loss.backward()
    optimizer.step()


def test_linear_probe_trains_only_the_classifier_and_keeps_bn_statistics():
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=5)
    frozen = freeze(model, "backbone")
    optimizer = create_optimizer(model, recipe_config({"model": "test_resnet"}), lr=1e-2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_step(model, optimizer)

    trained = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trained == {"fc.weight", "fc.bias"} and len(frozen) == len(list(model.parameters())) - 2
    for name, p in model.named_parameters():
        assert (p.grad is None) == (name in frozen), name
    assert optimizer_params(optimizer) == {id(model.fc.weight), id(model.fc.bias)}
    after = model.state_dict()
    for key, value in before.items():  # weights and BN running statistics alike
        changed = not torch.equal(value, after[key])
        assert changed == key.startswith("fc."), key


def test_stages_freeze_keeps_bn_statistics_only_in_the_frozen_stages():
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=5)
    freeze(model, "stages:1")
    optimizer = create_optimizer(model, recipe_config({"model": "test_resnet"}), lr=1e-2)
    before = {k: v.clone() for k, v in model.state_dict().items() if "running_mean" in k}
    train_step(model, optimizer)
    assert not model.layer3[0].bn1.training and model.layer4[0].bn1.training
    for key, value in before.items():
        assert torch.equal(value, model.state_dict()[key]) != key.startswith("layer4."), key
    assert {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad} == {"layer4", "fc"}


@pytest.mark.parametrize("model_name,stages,trained,frozen", [
    ("seresnet50", 1, {"layer4", "fc"}, {"layer3"}),
    ("seresnet50", 2, {"layer3", "layer4", "fc"}, {"layer2"}),
    ("efficientnet_b0", 1, {"blocks.6", "conv_head", "bn2", "classifier"}, {"blocks.5"}),
    ("vit_small_patch16_224", 2, {"blocks.10", "blocks.11", "norm", "head"}, {"blocks.9", "patch_embed"}),
])
def test_stages_freeze_follows_timms_stage_groups(model_name, stages, trained, frozen):
    model = timm.create_model(model_name, num_classes=4)
    freeze(model, f"stages:{stages}")

    def prefix(name):  # "blocks.6.0.conv_pw.weight" -> "blocks.6"; "layer4.0.conv1.weight" -> "layer4"
        parts = name.split(".")
        return ".".join(parts[:2]) if parts[0] == "blocks" else parts[0]

    trainable = {prefix(n) for n, p in model.named_parameters() if p.requires_grad}
    still = {prefix(n) for n, p in model.named_parameters() if not p.requires_grad}
    assert trainable == trained
    assert frozen <= still


def test_too_many_stages_is_a_clear_error():
    model = timm.create_model("test_resnet", num_classes=4)
    with pytest.raises(ValueError, match="stages:1-4"):
        freeze(model, "stages:5")


def test_layer_decay_scales_each_groups_lr_below_the_head():
    model = timm.create_model("test_resnet", num_classes=4)
    cfg = recipe_config({"model": "test_resnet", "layer_decay": 0.5})
    optimizer = create_optimizer(model, cfg, lr=1e-3)
    scales = sorted({group["lr_scale"] for group in optimizer.param_groups})
    assert scales[-1] == 1.0 and len(scales) > 3
    assert all(a / b == pytest.approx(0.5) for a, b in zip(scales, scales[1:]))
    fc_group = next(g for g in optimizer.param_groups if any(p is model.fc.weight for p in g["params"]))
    assert fc_group["lr_scale"] == 1.0
    # timm's scheduler applies the scale: each group's rate is the scheduled rate times its lr_scale
    scheduler, _ = create_scheduler_v2(optimizer, "cosine", num_epochs=2, warmup_epochs=0, step_on_epochs=False,
                                       updates_per_epoch=10)
    scheduler.step_update(num_updates=5)
    rates = {g["lr"] / g["lr_scale"] for g in optimizer.param_groups}
    assert len({round(r, 12) for r in rates}) == 1


def test_lr_follows_the_global_batch_as_timm_and_recipes_keep_their_rate():
    for model_name, recipe in RECIPES.items():
        cfg = recipe_config({"model": model_name})
        # At its own batch a recipe runs at its rate: square-root scaling for AdamW, linear for SGD (airbench)
        assert scaled_lr(cfg.lr, recipe["batch_size"], cfg.lr_base_size, cfg.lr_scale, cfg.opt) == \
            (recipe["lr"], "linear" if cfg.opt == "sgd" else "sqrt")
    # A rate given on the command line is at --lr-base-size (default 256), not at the recipe's batch.
    assert recipe_config({"model": "efficientnet_b0", "lr": 1e-3}).lr_base_size == 256
    assert recipe_config({"model": "efficientnet_b0", "lr": 1e-3, "lr_base_size": 64}).lr_base_size == 64
    assert scaled_lr(3e-3, 64, 512, "auto") == (pytest.approx(3e-3 / 8 ** 0.5), "sqrt")   # AdamW: sqrt
    assert scaled_lr(0.1, 1024, 256, "auto", optimizer="sgd") == (pytest.approx(0.4), "linear")
    assert scaled_lr(1e-3, 4096, 256, "linear")[0] == pytest.approx(1.6e-2)
    assert scaled_lr(1e-3, 4096, 256, "none")[0] == 1e-3


@pytest.mark.parametrize("spec", ["stages:x", "stages:0", "head"])
def test_bad_freeze_spec_is_refused_in_one_line(spec):
    with pytest.raises(SystemExit, match=f"--freeze {spec}: choose none, backbone or stages:N"):
        recipe_config({"model": "test_resnet", "freeze": spec})


@pytest.mark.slow
def test_photo_linear_probe_run_records_its_options_and_exports_the_models_crop_pct(tmp_path):
    root = make_image_folder(tmp_path / "photos", per_class=8, size=(120, 160), fmt="jpg")
    out = tmp_path / "run"
    result = run_in_process(
        FINETUNE, "--model", "test_resnet", "--img-size", "64", "--epochs", "1", "--batch-size", "8", "--data-dir",
        root, "--cache-dir", tmp_path / "cache", "--output-dir", out, "--val-size", "6", "--augment", "photo",
        "--auto-augment", "trivialaugment", "--erase-prob", "0.5", "--freeze", "backbone", "--layer-decay", "0.7",
        "--lr", "4e-3", "--lr-base-size", "32")
    args = json.loads((out / "training_args.json").read_text())
    assert args["augment"] == "photo" and args["auto_augment"] == "trivialaugment" and args["erase_prob"] == 0.5
    assert args["freeze"] == "backbone" and args["layer_decay"] == 0.7
    assert args["global_batch_size"] == 8 and args["lr_scale"] == "sqrt"
    assert args["effective_lr"] == pytest.approx(4e-3 * (8 / 32) ** 0.5)  # AdamW: square-root rule
    assert "lr 0.002 = 0.004 at batch 32 scaled (sqrt) to the global batch 8" in result.stdout
    config = json.loads((out / "best" / "config.json").read_text())
    assert config["pretrained_cfg"]["crop_pct"] == timm.create_model("test_resnet").pretrained_cfg["crop_pct"] == 0.95
    assert config["pretrained_cfg"]["input_size"] == [3, 64, 64]
    # A linear probe from scratch: the backbone's BatchNorm statistics are still their initial values.
    weights = load_file(out / "best" / "model.safetensors")
    assert torch.equal(weights["layer1.0.bn1.running_mean"], torch.zeros_like(weights["layer1.0.bn1.running_mean"]))
    assert torch.equal(weights["layer4.0.bn2.running_var"], torch.ones_like(weights["layer4.0.bn2.running_var"]))


def test_cpu_recipes_use_bf16_only_where_the_cpu_computes_it(monkeypatch):
    import vision_ensemble.training.finetuning as finetuning

    assert recipe_config({"model": "airbench_s"}).mixed_precision == "bf16-if-native"
    assert finetuning.resolve_mixed_precision(None, on_gpu=True) == "bf16"
    assert finetuning.resolve_mixed_precision(None, on_gpu=False) == "no"
    assert finetuning.resolve_mixed_precision("bf16", on_gpu=False) == "bf16"  # asked for: kept (with a warning)
    assert finetuning.resolve_mixed_precision("bf16-if-native", on_gpu=True) == "bf16"
    native = torch.ops.mkldnn._is_mkldnn_bf16_supported()  # what oneDNN says of this machine's CPU
    assert finetuning.resolve_mixed_precision("bf16-if-native", on_gpu=False) == ("bf16" if native else "no")
    for native in (False, True):
        monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda native=native: native)
        assert finetuning.resolve_mixed_precision("bf16-if-native", on_gpu=False) == ("bf16" if native else "no")


@pytest.mark.parametrize("native", [False, True])
def test_muon_orthogonalises_in_fp32_on_a_cpu_without_native_bf16(monkeypatch, native):
    """timm's Muon works in bf16, emulated (35x slower) on such a CPU: there the step is fp32's, to rounding."""
    import timm.optim.muon as timm_muon

    monkeypatch.setattr(timm_muon, "zeropower_via_newtonschulz", timm_muon.zeropower_via_newtonschulz)  # restored
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: native)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    torch.manual_seed(0)
    model = torch.nn.Linear(64, 32, bias=False)
    before, grad = model.weight.detach().clone(), torch.randn(32, 64)
    model.weight.grad = grad.clone()
    cfg = recipe_config({"model": "airbench_s", "opt": "muon", "momentum": 0.0, "weight_decay": 0.0,
                         "norm_bias_lr_scale": 1.0})
    create_optimizer(model, cfg, lr=0.1).step()
    coefficients = timm_muon.resolve_ns_coefficients("quintic", timm_muon._COEFFICIENTS)
    scale = timm_muon.get_lr_scale(grad.shape, "match_rms_adamw")
    orthogonalised = {dtype: timm_muon.zeropower_via_newtonschulz(grad, 5, coefficients, dtype=dtype).float()
                      for dtype in (torch.float32, torch.bfloat16)}
    steps = {dtype: before - 0.1 * scale * update for dtype, update in orthogonalised.items()}
    assert not torch.allclose(steps[torch.float32], steps[torch.bfloat16], atol=1e-5)  # the two can be told apart
    assert torch.allclose(model.weight.detach(), steps[torch.bfloat16 if native else torch.float32], atol=1e-5)


def test_lookahead_resets_the_network_to_a_slow_copy_on_airbenchs_schedule():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    lookahead = Lookahead(model, every=5)
    total, warmup = 100, 10
    assert [lookahead.decay(n, total, warmup) for n in (3, 5, 10)] == [None, 0.0, 0.0]  # in the warmup: follow
    assert lookahead.decay(50, total, warmup) == pytest.approx(0.95 ** 5 * 0.5 ** 3)
    assert lookahead.decay(total, total, warmup) == 1.0  # the last step, whatever its remainder

    def train(steps_from: int, steps_to: int) -> None:
        for n in range(steps_from, steps_to + 1):
            with torch.no_grad():  # a stand-in for an optimizer step and a forward in train mode
                for value in model.state_dict().values():
                    if value.is_floating_point():
                        value.add_(torch.randn_like(value))
                model[1].num_batches_tracked += 1
            lookahead.step(n, total, warmup)

    train(1, 10)  # the warmup: the network is left as trained, the slow copy follows it
    assert all(torch.equal(lookahead.slow[name], value) for name, value in model.state_dict().items()
               if value.is_floating_point())
    train(11, 14)  # between updates the network trains on its own
    slow_before = {name: value.clone() for name, value in lookahead.slow.items()}
    assert not torch.equal(model.state_dict()["0.weight"], slow_before["0.weight"])
    with torch.no_grad():
        for value in model.state_dict().values():
            if value.is_floating_point():
                value.add_(torch.randn_like(value))
        model[1].num_batches_tracked += 1
    trained = {name: value.clone() for name, value in model.state_dict().items()}
    lookahead.step(15, total, warmup)  # slow + (1 - d) x (trained - slow), BatchNorm's statistics included
    decay = 0.95 ** 5 * (15 / total) ** 3
    for name in ("0.weight", "0.bias", "1.bias", "1.running_mean", "1.running_var"):
        expected = slow_before[name] + (1 - decay) * (trained[name] - slow_before[name])
        torch.testing.assert_close(model.state_dict()[name], expected)
        assert torch.equal(model.state_dict()[name], lookahead.slow[name])
    assert model[1].num_batches_tracked.item() == 15  # integers are counters, not averaged
    state = {name: value.clone() for name, value in lookahead.state_dict()["slow"].items()}
    train(16, 99)
    slow = {name: value.clone() for name, value in lookahead.slow.items()}
    train(100, 100)  # the last step: the network takes the slow copy as it stood
    assert all(torch.equal(model.state_dict()[name], slow[name]) for name in slow)
    restored = Lookahead(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)))
    restored.load_state_dict({"slow": state})
    assert all(torch.equal(restored.slow[name], state[name]) for name in state)
