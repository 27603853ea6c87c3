"""Weight initialisers for the Linear and Conv layers of a model, chosen in the `initializer` config group.

Most are torch.nn.init functions named in the config; this module adds the course's fan-in uniform and
Kaiming variants whose nonlinearity follows the model's activation."""

import functools
import math
from collections.abc import Callable

from omegaconf import ListConfig
from torch import nn

from dlrun.core.errors import ConfigError
from dlrun.core.text import did_you_mean

INIT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)

# The names torch.nn.init.calculate_gain knows, for each activation dlrun offers. ELU and GELU pass
# positive inputs and damp negative ones as ReLU does, so He's ReLU gain is the usual choice for them.
GAIN_NAMES = {
    "relu": "relu",
    "leaky_relu": "leaky_relu",
    "elu": "relu",
    "gelu": "relu",
    "tanh": "tanh",
    "sigmoid": "sigmoid",
    "selu": "selu",
    "linear": "linear",
    "conv1d": "conv1d",
    "conv2d": "conv2d",
    "conv3d": "conv3d",
}
LEAKY_SLOPE = 0.01  # nn.LeakyReLU's default negative slope, which the leaky_relu gain must match


def fan_in_uniform_(tensor):
    """U(-1/sqrt(fan_in), +1/sqrt(fan_in)), as the course derives it: each weight's variance is 1/(3 fan_in),
    so a unit's summed input keeps a third of its inputs' variance. (PyTorch's Linear default has the same bound.)"""
    # He uniform with a = sqrt(5) has gain sqrt(2 / 6), so its bound sqrt(1/3) * sqrt(3 / fan_in) is 1 / sqrt(fan_in).
    return nn.init.kaiming_uniform_(tensor, a=math.sqrt(5), mode="fan_in", nonlinearity="leaky_relu")


def _gain_args(nonlinearity) -> tuple[str, float]:
    """torch's name for the activation, and the negative slope `a` its gain formula needs."""
    if isinstance(nonlinearity, (list, tuple, ListConfig)):  # a CNN with one activation per block
        if len(set(nonlinearity)) != 1:
            raise ConfigError(
                "initializer.fn.nonlinearity",
                list(nonlinearity),
                "the model's blocks use different activations: set one, e.g. initializer.fn.nonlinearity=relu",
            )
        nonlinearity = nonlinearity[0]
    if nonlinearity not in GAIN_NAMES:
        raise ConfigError(
            "initializer.fn.nonlinearity",
            nonlinearity,
            f"must be one of {', '.join(GAIN_NAMES)}{did_you_mean(nonlinearity, GAIN_NAMES)}",
        )
    name = GAIN_NAMES[nonlinearity]
    return name, LEAKY_SLOPE if name == "leaky_relu" else 0.0


def kaiming_uniform_(tensor, nonlinearity="relu", mode: str = "fan_in"):
    """He uniform: U(-b, b) with b = gain * sqrt(3 / fan), the gain of the model's activation."""
    name, a = _gain_args(nonlinearity)
    return nn.init.kaiming_uniform_(tensor, a=a, mode=mode, nonlinearity=name)


def kaiming_normal_(tensor, nonlinearity="relu", mode: str = "fan_in"):
    """He normal: N(0, std^2) with std = gain / sqrt(fan), the gain of the model's activation."""
    name, a = _gain_args(nonlinearity)
    return nn.init.kaiming_normal_(tensor, a=a, mode=mode, nonlinearity=name)


def initialize(model: nn.Module, fn: Callable | None, zero_bias: bool) -> list[str]:
    """Apply `fn` to the weight of every Linear and Conv layer; return the layers it went to.

    A model with loaded (pretrained) weights names the part still fresh with `fresh_modules()`: only that
    part is initialised, so a pretrained backbone is never overwritten."""
    if fn is None:
        return []
    scope = model.fresh_modules() if hasattr(model, "fresh_modules") else model
    allowed = {id(m) for m in scope.modules()}
    applied = []
    for name, module in model.named_modules():
        if isinstance(module, INIT_LAYERS) and id(module) in allowed:
            fn(module.weight)
            if zero_bias and module.bias is not None:
                nn.init.zeros_(module.bias)
            applied.append(f"{name + ' ' if name else ''}({type(module).__name__} {tuple(module.weight.shape)})")
    return applied


def describe(fn: Callable | None, zero_bias: bool) -> str:
    """What the log says was applied: the function with its arguments, and what happened to the biases."""
    if fn is None:
        return "default (PyTorch's own)"
    func, kwargs = (fn.func, fn.keywords) if isinstance(fn, functools.partial) else (fn, {})
    args = ", ".join(f"{k}={v}" for k, v in kwargs.items())
    return f"{func.__module__}.{func.__name__}({args}), biases {'zeroed' if zero_bias else 'kept'}"
