"""Each shipped initialiser, composed from its config, gives its documented bounds or standard deviation
on a wide layer; it touches Linear and Conv weights only, and zeroes or keeps biases as configured."""

import math

import pytest
import torch
from helpers import compose_config
from hydra.utils import instantiate
from torch import nn

from dlrun.core.errors import ConfigError
from dlrun.model.initializers import describe, initialize

FAN_IN, FAN_OUT = 1000, 200  # 200,000 weights: sample statistics within about 1% of the true ones


def init_fn(option: str, *overrides: str):
    cfg = compose_config(f"initializer={option}", *overrides)
    return (instantiate(cfg.initializer.fn) if cfg.initializer.fn else None), cfg.initializer.zero_bias


def wide_layer(option: str, *overrides: str) -> nn.Linear:
    torch.manual_seed(0)
    layer = nn.Linear(FAN_IN, FAN_OUT)
    fn, zero_bias = init_fn(option, *overrides)
    assert initialize(layer, fn, zero_bias) == [f"(Linear {(FAN_OUT, FAN_IN)})"]
    return layer


def assert_uniform(w: torch.Tensor, low: float, high: float):
    assert w.min() >= low and w.max() <= high
    span = high - low
    assert w.min() < low + 0.001 * span and w.max() > high - 0.001 * span, "fills the whole interval"
    assert w.std().item() == pytest.approx(span / math.sqrt(12), rel=0.01)


def assert_normal(w: torch.Tensor, std: float, mean: float = 0.0):
    assert w.mean().item() == pytest.approx(mean, abs=0.01 * std)
    assert w.std().item() == pytest.approx(std, rel=0.01)


def test_uniform_fills_a_to_b():
    assert_uniform(wide_layer("uniform").weight, 0.0, 1.0)
    assert_uniform(wide_layer("uniform", "initializer.fn.a=-0.2", "initializer.fn.b=0.3").weight, -0.2, 0.3)


def test_fan_in_uniform_is_plus_minus_one_over_root_fan_in():
    bound = 1 / math.sqrt(FAN_IN)
    assert_uniform(wide_layer("fan_in_uniform").weight, -bound, bound)
    # For a conv, fan_in counts every input of a unit: in_channels * kernel height * kernel width.
    torch.manual_seed(0)
    conv = nn.Conv2d(64, 256, 3)
    initialize(conv, *init_fn("fan_in_uniform"))
    assert_uniform(conv.weight, -1 / math.sqrt(64 * 9), 1 / math.sqrt(64 * 9))


def test_normal_has_its_mean_and_std():
    assert_normal(wide_layer("normal").weight, 0.01)
    assert_normal(wide_layer("normal", "initializer.fn.mean=0.5", "initializer.fn.std=0.2").weight, 0.2, mean=0.5)


def test_xavier_bounds_and_std():
    assert_uniform(wide_layer("xavier_uniform").weight, *(s * math.sqrt(6 / (FAN_IN + FAN_OUT)) for s in (-1, 1)))
    assert_normal(wide_layer("xavier_normal").weight, math.sqrt(2 / (FAN_IN + FAN_OUT)))


# He's gain for each activation; elu and gelu borrow relu's, leaky_relu uses nn.LeakyReLU's slope 0.01.
GAINS = {
    "relu": math.sqrt(2),
    "gelu": math.sqrt(2),
    "elu": math.sqrt(2),
    "tanh": 5 / 3,
    "sigmoid": 1.0,
    "leaky_relu": math.sqrt(2 / (1 + 0.01**2)),
}


@pytest.mark.parametrize("activation", list(GAINS))
def test_kaiming_follows_the_models_activation(activation):
    gain = GAINS[activation]
    layer = wide_layer("kaiming_uniform", f"model.activation={activation}")
    bound = gain * math.sqrt(3 / FAN_IN)
    assert_uniform(layer.weight, -bound, bound)
    assert_normal(wide_layer("kaiming_normal", f"model.activation={activation}").weight, gain / math.sqrt(FAN_IN))


def test_kaiming_nonlinearity_set_explicitly_wins_and_models_without_activation_use_relu():
    w = wide_layer("kaiming_normal", "model.activation=relu", "initializer.fn.nonlinearity=tanh").weight
    assert_normal(w, (5 / 3) / math.sqrt(FAN_IN))
    assert_normal(wide_layer("kaiming_normal", "model=logistic").weight, math.sqrt(2) / math.sqrt(FAN_IN))
    w = wide_layer("kaiming_normal", "initializer.fn.mode=fan_out").weight
    assert_normal(w, math.sqrt(2) / math.sqrt(FAN_OUT))


def test_kaiming_rejects_an_unknown_nonlinearity_and_mixed_cnn_activations():
    with pytest.raises(ConfigError, match="initializer.fn.nonlinearity=swish: must be one of relu"):
        wide_layer("kaiming_uniform", "initializer.fn.nonlinearity=swish")
    with pytest.raises(ConfigError, match="different activations"):
        wide_layer("kaiming_uniform", "model=cnn", "model.activation=[relu,tanh]")


def test_orthogonal_rows_are_orthonormal():
    layer = nn.Linear(300, 100)
    initialize(layer, *init_fn("orthogonal"))
    w = layer.weight.detach()  # 100 x 300: the rows are orthonormal
    assert torch.allclose(w @ w.T, torch.eye(100), atol=1e-5)


def test_constant_makes_every_unit_the_same():
    layer = wide_layer("constant")
    assert torch.all(layer.weight == 0.1) and torch.all(layer.bias == 0)
    assert torch.all(wide_layer("constant", "initializer.fn.val=-0.5").weight == -0.5)


def test_default_leaves_pytorchs_init_alone():
    torch.manual_seed(0)
    expected = nn.Linear(FAN_IN, FAN_OUT)
    torch.manual_seed(0)
    layer = nn.Linear(FAN_IN, FAN_OUT)
    assert initialize(layer, *init_fn("default")) == []
    assert torch.equal(layer.weight, expected.weight) and torch.equal(layer.bias, expected.bias)


def test_biases_are_zeroed_or_kept():
    assert torch.all(wide_layer("xavier_uniform").bias == 0)
    kept = wide_layer("xavier_uniform", "initializer.zero_bias=false").bias
    torch.manual_seed(0)
    assert torch.equal(kept, nn.Linear(FAN_IN, FAN_OUT).bias), "PyTorch's own bias is kept"


def test_only_linear_and_conv_layers_are_touched_and_the_log_names_them():
    torch.manual_seed(0)
    cfg = compose_config("model=cnn", "model.channels=[4]", "model.head_hidden=8", "model.dropout=0")
    model = instantiate(cfg.model, in_shape=(1, 8, 8), num_classes=3)
    applied = initialize(model, *init_fn("constant"))
    assert applied == ["features.0.0 (Conv2d (4, 1, 5, 5))", "head.1 (Linear (8, 64))", "head.3 (Linear (3, 8))"]
    batch_norm = model.features[0][1]
    assert torch.all(batch_norm.weight == 1) and torch.all(batch_norm.bias == 0), "batch norm keeps its own init"
    assert describe(*init_fn("constant")) == "torch.nn.init.constant_(val=0.1), biases zeroed"
    assert describe(*init_fn("default")) == "default (PyTorch's own)"
