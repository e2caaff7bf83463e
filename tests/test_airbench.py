"""The airbench family registered with timm: built by name, its stem whitens the patches it was set from, a folder
exported in timm's format (other widths included) loads back through timm alone, and its recipe's optimizer groups
and thread count are what the recipe says."""

from __future__ import annotations

import subprocess
import sys

import pytest
import timm
import torch

from conftest import ENV, REPO
from vision_ensemble.config import AIRBENCH_MODELS, RECIPES, recipe_config
from vision_ensemble.model import airbench, export_model, load_model_folder, training_data_config
from vision_ensemble.training.distributed import cpu_threads
from vision_ensemble.training.finetuning import create_optimizer


def test_each_variant_is_a_timm_model_with_the_widths_it_names():
    for name, widths in (("airbench_s", (64, 256, 256)), ("airbench95", (128, 384, 384)), ("airbench_m", (96, 384, 384)),
                         ("airbench_l", (128, 512, 512))):
        assert name in timm.list_models("airbench*")
        model = timm.create_model(name, num_classes=7)
        assert [stage.conv2.out_channels for stage in model.stages] == list(widths)
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    # the names config.py gives recipes are the names registered, each with its default config
    assert sorted(timm.list_models("airbench*")) == sorted(AIRBENCH_MODELS) and set(AIRBENCH_MODELS) <= set(RECIPES)
    assert all(timm.create_model(name).pretrained_cfg["input_size"] == (3, 32, 32) for name in AIRBENCH_MODELS)
    model = timm.create_model("airbench_s")
    model.reset_classifier(3)
    assert model.get_classifier().out_features == 3 and model(torch.randn(1, 3, 32, 32)).shape == (1, 3)


def test_airbench96_adds_a_third_conv_and_a_residual_over_the_last_two_to_each_group():
    model = timm.create_model("airbench96").eval()
    assert [stage.conv3.out_channels for stage in model.stages] == [128, 512, 512]
    assert {m.momentum for m in model.modules() if isinstance(m, airbench.ScalelessBatchNorm)} == {0.1}
    group, x = model.stages[1], torch.randn(2, 128, 16, 16)
    with torch.no_grad():
        first = group.act(group.norm1(group.pool(group.conv1(x))))
        branch = group.norm3(group.conv3(group.act(group.norm2(group.conv2(first)))))
        assert torch.allclose(group(x), group.act(first + branch))
        group.conv3.weight.zero_()  # the branch silenced (a fresh BatchNorm in eval adds nothing): the first conv alone
        assert torch.allclose(group(x), group.act(first))
    assert not hasattr(timm.create_model("airbench_l").stages[1], "conv3")


def test_the_whitened_stem_decorrelates_the_patches_it_was_set_from():
    model = timm.create_model("airbench_s")
    generator = torch.Generator().manual_seed(0)
    # Correlated channels and neighbouring pixels, as in photos: a smoothed, channel-mixed noise image.
    base = torch.nn.functional.avg_pool2d(torch.randn(256, 1, 34, 34, generator=generator), 3, 1)
    images = base.repeat(1, 3, 1, 1) + 0.1 * torch.randn(256, 3, 32, 32, generator=generator)
    model.init_whitening(images)
    out = model.stem(images)[:, :12]  # the 12 eigen-directions (the other 12 are their negatives)
    flat = out.permute(0, 2, 3, 1).reshape(-1, 12)
    covariance = flat.T @ flat / len(flat)
    # Unit variance along each direction (up to the eps added to the eigenvalues), nothing between them.
    assert torch.allclose(covariance.diagonal()[:6], torch.ones(6), atol=0.05)
    assert (covariance - torch.diag(covariance.diagonal())).abs().max() < 0.02
    assert torch.equal(model.stem.weight[12:], -model.stem.weight[:12])
    assert not model.stem.weight.requires_grad


def test_an_exported_member_of_other_widths_loads_back_through_timm_alone(tmp_path):
    model = timm.create_model("airbench_s", num_classes=10, widths=[32, 64, 64]).eval()
    model.init_whitening(torch.randn(64, 3, 32, 32))
    folder = export_model(model, tmp_path / "member", training_data_config(model, 32), [f"c{i}" for i in range(10)])
    loaded, data_config, class_names = load_model_folder(folder)
    x = torch.randn(4, 3, 32, 32)
    assert torch.equal(loaded(x), model(x))
    assert data_config["input_size"] == [3, 32, 32] and data_config["crop_pct"] == 1.0 and class_names[0] == "c0"
    # A fresh interpreter: `import vision_ensemble.model` is all timm needs to build it from the folder.
    script = ("import timm, vision_ensemble.model; m = timm.create_model('local-dir:" + str(folder) + "', "
              "pretrained=True); print([s.conv2.out_channels for s in m.stages])")
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=ENV, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[32, 64, 64]"


def test_the_recipe_trains_normalisation_biases_faster_and_never_their_fixed_scales():
    cfg = recipe_config({"model": "airbench_s"})
    assert (cfg.opt, cfg.momentum, cfg.norm_bias_lr_scale, cfg.mixup_alpha, cfg.label_smoothing) == ("sgd", 0.85, 64.0, 0.0, 0.2)
    model = timm.create_model("airbench_s")
    optimizer = create_optimizer(model, cfg, 1.5)
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["nesterov"]
    norm_biases = {id(m.bias) for m in model.modules() if isinstance(m, airbench.ScalelessBatchNorm)}
    by_group = {g.get("lr_scale", 1.0): {id(p) for p in g["params"]} for g in optimizer.param_groups}
    assert by_group[64.0] == norm_biases
    trained = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert not trained & {id(m.weight) for m in model.modules() if isinstance(m, airbench.ScalelessBatchNorm)}
    assert id(model.stem.weight) not in trained
    with pytest.raises(ValueError, match="choose one"):
        create_optimizer(model, recipe_config({"model": "airbench_s", "layer_decay": 0.7}), 1.5)


def test_a_cpu_training_process_gets_the_cores_shared_among_the_machine_s_processes(monkeypatch):
    cores = len(__import__("os").sched_getaffinity(0))
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert cpu_threads(None) == cores
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(cores))
    assert cpu_threads(None) == 1
    assert cpu_threads(3) == 3


def test_airbench96s_recipe_is_airbench96s_augmentation_at_a_lower_rate():
    s, widest = recipe_config({"model": "airbench_s"}), recipe_config({"model": "airbench96"})
    assert (widest.cutout, widest.crop_padding, s.cutout, s.crop_padding) == (12, 4, 0, 2)
    assert widest.lr < s.lr and widest.epochs == 31  # airbench96's own schedule
    # the weight decay a step, lr x wd, is airbench96's 0.012 against airbench94's 0.0153 in its units
    assert widest.lr * widest.weight_decay / (s.lr * s.weight_decay) == pytest.approx(0.012 / 0.0153, rel=0.01)


def test_airbench95s_recipe_changes_its_own_entry_only():
    s, wider = recipe_config({"model": "airbench_s"}), recipe_config({"model": "airbench95"})
    assert (wider.lr, wider.epochs) != (s.lr, s.epochs)
    assert (wider.momentum, wider.label_smoothing, wider.norm_bias_lr_scale) == (s.momentum, s.label_smoothing,
                                                                                s.norm_bias_lr_scale)
