"""Every shipped config option composes, and the model, optimizer and initializer nodes build.

Groups and options are read from the package (the same listing `dlrun --help` prints), so a new
option file is covered without touching this test."""

import math

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from dlrun.config.groups import config_groups
from dlrun.model.initializers import initialize

GROUPS = config_groups()
ALL_OPTIONS = [(group, option) for group, options in GROUPS.items() for option in options]
IN_SHAPE, NUM_CLASSES = (1, 8, 8), 10


def compose_train(*overrides: str):
    with initialize_config_module("dlrun.configs", version_base="1.3"):
        return compose("train", overrides=list(overrides))


def options_of(group: str) -> list[str]:
    return GROUPS.get(group, [])


def test_the_issue_options_are_shipped():
    required = {
        "dataset": {"digits", "mnist"},
        "model": {"logistic", "mlp", "cnn"},
        "optimizer": {"sgd", "adam"},
        "initializer": {"default", "xavier_uniform", "kaiming_uniform"},
        "device": {"auto", "cpu", "cuda"},
        "loss": {"cross_entropy", "focal", "multi_margin", "bce", "mse", "mae", "huber"},
    }
    assert {"diabetes", "function"} <= set(GROUPS["dataset"])
    for group, options in required.items():
        assert options <= set(GROUPS.get(group, [])), f"group {group} lacks {options - set(GROUPS.get(group, []))}"


@pytest.mark.parametrize(("group", "option"), ALL_OPTIONS, ids=[f"{g}={o}" for g, o in ALL_OPTIONS])
def test_option_composes_and_resolves(group, option):
    cfg = compose_train(f"{group}={option}")
    # Resolving catches broken interpolations, which compose alone lets through.
    container = OmegaConf.to_container(cfg, resolve=True)
    for key in ("dataset", "model", "optimizer", "initializer", "device", "trainer", "seed"):
        assert key in container, f"{group}={option} drops the top-level key {key}"


def test_defaults_and_main_key_names():
    cfg = compose_train()
    assert cfg.dataset.name == "digits"
    assert cfg.device.type == "auto"
    for key in ("epochs", "batch_size", "eval_batch_size", "val_fraction", "monitor"):
        assert key in cfg.trainer, f"trainer.{key} missing"
    assert cfg.trainer.monitor == "val/f1"
    assert isinstance(cfg.seed, int)
    for key in ("lr", "momentum", "weight_decay"):
        assert key in compose_train("optimizer=sgd").optimizer
    mlp = compose_train("model=mlp").model
    for key in ("hidden_sizes", "activation", "dropout", "batch_norm"):
        assert key in mlp, f"model.{key} missing from model=mlp"
    assert "channels" in compose_train("model=cnn").model
    assert "root" in compose_train("dataset=mnist").dataset


def test_a_device_index_composes():
    cfg = compose_train("device=cuda", "device.index=1")
    assert (cfg.device.type, cfg.device.index) == ("cuda", 1)


@pytest.mark.parametrize("option", options_of("model"))
def test_model_instantiates_and_runs_forward(option):
    torch.manual_seed(0)
    model = instantiate(compose_train(f"model={option}").model, in_shape=IN_SHAPE, num_classes=NUM_CLASSES)
    assert isinstance(model, nn.Module)
    logits = model(torch.randn(4, *IN_SHAPE))
    assert logits.shape == (4, NUM_CLASSES)
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, *IN_SHAPE)).shape == (1, NUM_CLASSES)


class UserNet(nn.Module):
    """A user's own model: gets the same in_shape and num_classes as dlrun's."""

    def __init__(self, in_shape, num_classes, width: int = 3):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(in_shape), width), nn.Linear(width, num_classes))

    def forward(self, x):
        return self.net(x)


def test_a_users_own_model_class_plugs_in():
    cfg = compose_train("model=logistic", f"model._target_={__name__}.UserNet", "+model.width=5")
    model = instantiate(cfg.model, in_shape=IN_SHAPE, num_classes=NUM_CLASSES)
    assert isinstance(model, UserNet) and model.net[1].out_features == 5
    assert model(torch.randn(2, *IN_SHAPE)).shape == (2, NUM_CLASSES)
    assert cfg.optimizer == compose_train().optimizer, "everything else stays as it was"


def test_model_flatten_size_follows_the_image_shape():
    cfg = compose_train("model=cnn").model
    for shape in [(1, 8, 8), (1, 28, 28), (3, 32, 32)]:
        model = instantiate(cfg, in_shape=shape, num_classes=NUM_CLASSES)
        assert model(torch.randn(2, *shape)).shape == (2, NUM_CLASSES)


@pytest.mark.parametrize("option", options_of("optimizer"))
def test_optimizer_instantiates_and_steps(option):
    cfg = compose_train(f"optimizer={option}").optimizer
    model = nn.Linear(4, 2)
    before = model.weight.detach().clone()
    optimizer = instantiate(cfg)(params=model.parameters())
    assert isinstance(optimizer, torch.optim.Optimizer)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(cfg.lr)
    model(torch.randn(8, 4)).pow(2).mean().backward()
    optimizer.step()
    assert not torch.equal(before, model.weight)


@pytest.mark.parametrize("option", options_of("initializer"))
def test_initializer_reaches_every_linear_and_conv_layer(option):
    cfg = compose_train(f"initializer={option}", "model=cnn").initializer
    torch.manual_seed(0)
    model = instantiate(compose_train("model=cnn").model, in_shape=IN_SHAPE, num_classes=NUM_CLASSES)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
    before = {n: m.weight.detach().clone() for n, m in layers.items()}
    fn = instantiate(cfg.fn) if cfg.fn else None
    applied = initialize(model, fn, cfg.zero_bias)
    if fn is None:
        assert applied == []
        assert all(torch.equal(before[n], m.weight) for n, m in layers.items())
    else:
        assert len(applied) == len(layers)
        assert all(not torch.equal(before[n], m.weight) for n, m in layers.items())
