"""What a run trains, built from the config in one place: the model and its initialisation, the
optimizer and the losses. The real run, `dlrun eval` and the dry check before a run all use it.

The dry check builds the same things on PyTorch's meta device, which computes shapes without memory
or arithmetic (a ResNet at 224 costs milliseconds), so that a model that cannot take the data, an
initializer that fails on it or an optimizer argument that is wrong stops the run before any data is read."""

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from torch import nn

from dlrun.config.check import check_arguments, check_config
from dlrun.core.errors import ConfigError, DlrunError
from dlrun.core.text import show_value
from dlrun.data import known_shape
from dlrun.engine.optim import build_loss, build_optimizer
from dlrun.model.initializers import initialize


@dataclass
class Built:
    model: nn.Module
    optimizer: torch.optim.Optimizer
    train_loss: nn.Module  # with the trainer's label smoothing and class weights
    eval_loss: nn.Module  # val and test: plain cross-entropy, comparable across runs
    init_fn: Callable | None
    initialized: list[str]  # the layers init_fn reached


def make_model(model_cfg, in_shape, num_classes: int, recursive: bool = True) -> nn.Module:
    """The model a `model` config names, for inputs of `in_shape` and `num_classes` outputs."""
    return instantiate(model_cfg, in_shape=tuple(in_shape), num_classes=num_classes, _recursive_=recursive)


def init_weights(model: nn.Module, init_cfg) -> tuple[Callable | None, list[str]]:
    """The `initializer` group applied to the model: the function, and the layers it reached."""
    fn = instantiate(init_cfg["fn"]) if init_cfg.get("fn") else None
    return fn, initialize(model, fn, bool(init_cfg.get("zero_bias")))


def make_optimizer(opt_cfg, model: nn.Module) -> torch.optim.Optimizer:
    return build_optimizer(opt_cfg, [p for p in model.parameters() if p.requires_grad])


def build(cfg, in_shape, num_classes: int, device: torch.device, train_labels: torch.Tensor) -> Built:
    model = make_model(cfg.model, in_shape, num_classes)
    init_fn, initialized = init_weights(model, cfg.initializer)
    model.to(device)
    if cfg.trainer.get("channels_last", False) and len(in_shape) == 3:
        model.to(memory_format=torch.channels_last)  # the loaders give channels-last batches to match
    optimizer = make_optimizer(cfg.optimizer, model)
    train_loss = build_loss(cfg.trainer, train_labels, num_classes).to(device)
    return Built(model, optimizer, train_loss, nn.CrossEntropyLoss(), init_fn, initialized)


def check(cfg) -> None:
    """Every check before a run: the config's rules, then the dry build where the data's shape is known."""
    values = check_config(cfg)
    shape = known_shape(values.get("dataset") or {})
    if shape is not None:
        check_build(values, *shape)


class _CannotJudge(Exception):
    """The meta device cannot run this model (it reads values, say): the real build will judge it."""


@contextlib.contextmanager
def _judged(key: str, target, what: str):
    """An error of the dry build as one ConfigError naming `key`; a model's own ConfigError as it is."""
    try:
        yield
    except Exception as err:
        cause = err.__cause__ if isinstance(err, InstantiationException) and err.__cause__ else err
        if isinstance(cause, DlrunError):
            raise cause from None
        text = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        if isinstance(cause, NotImplementedError) or "meta" in text.lower():
            raise _CannotJudge from err
        raise ConfigError(key, target, f"{what}: {text}") from err


def check_build(values: dict, in_shape, num_classes: int) -> None:
    """Build the model, initializer and optimizer on the meta device and push a batch of 2 through the model."""
    weights = values["trainer"].get("class_weights")
    if isinstance(weights, list) and len(weights) != num_classes:
        raise ConfigError("trainer.class_weights", show_value(weights), f"must have {num_classes} weights, one per class")
    model_cfg = dict(values["model"])
    if "weights" in model_cfg:
        model_cfg["weights"] = "none"  # the real build loads them; the shapes are the same
    target, size = model_cfg.get("_target_"), _size(in_shape)
    check_arguments("model", target, model_cfg, supplied=("in_shape", "num_classes"))
    fn_cfg, opt_cfg = values["initializer"].get("fn"), values["optimizer"]
    if fn_cfg:
        check_arguments("initializer.fn", fn_cfg.get("_target_"), fn_cfg, supplied=("tensor",), skip_first=True)
    check_arguments("optimizer", opt_cfg.get("_target_"), opt_cfg, supplied=("params",))
    try:
        with torch.device("meta"):
            with _judged("model", target, f"cannot be built for {size} inputs"):
                model = make_model(model_cfg, in_shape, num_classes)
            with _judged("model", target, f"cannot take {size} inputs"):
                out = model(torch.zeros(2, *in_shape))
            if tuple(getattr(out, "shape", ())) != (2, num_classes):
                raise ConfigError(
                    "model",
                    target,
                    f"must output (batch, {num_classes}) logits; it gives {tuple(getattr(out, 'shape', ()))} for a batch of 2",
                )
            with _judged("initializer.fn._target_", (fn_cfg or {}).get("_target_"), "fails on this model"):
                init_weights(model, values["initializer"])
            with _judged("optimizer._target_", opt_cfg.get("_target_"), "cannot be built"):
                make_optimizer(opt_cfg, model)
    except _CannotJudge:
        return


def _size(in_shape) -> str:
    if len(in_shape) == 3:
        return "x".join(str(d) for d in in_shape[1:]) + f" ({in_shape[0]}-channel)"
    return str(tuple(in_shape))
