"""Checks on the composed config, run before any work: a bad value is one ConfigError naming the key,
the value and what is allowed, never a traceback from deep inside a run.

Three layers, cheapest first: a schema per config group (types and ranges), the `_target_` names
(with the closest valid name for a typo), then a dry build of the model, initializer and optimizer
on PyTorch's meta device, which allocates nothing but runs every shape and argument check."""

import importlib
import inspect
import math
from pathlib import Path
from typing import Callable

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from dlrun.cli import did_you_mean
from dlrun.errors import ConfigError, DlrunError

METRIC_NAMES = ("loss", "accuracy", "precision", "recall", "f1")
MONITORS = [f"val/{m}" for m in METRIC_NAMES]
TRAIN_OR_VAL = [f"{split}/{m}" for split in ("train", "val") for m in METRIC_NAMES]
MAX_INT = 2**31 - 1  # sizes and counts beyond this are typos, and overflow torch's indexing

# (channels, height, width) and class count of the datasets whose shape is known before loading them,
# so that a model that cannot take it fails before any data is read or downloaded.
DATASET_SHAPES = {
    "digits": ((1, 8, 8), 10),
    "mnist": ((1, 28, 28), 10),
    "fashion_mnist": ((1, 28, 28), 10),
    "kmnist": ((1, 28, 28), 10),
    "cifar10": ((3, 32, 32), 10),
    "cifar100": ((3, 32, 32), 100),
    "spiral": ((2,), 3),  # points in the plane; spiral's class count is dataset.num_classes
    "xor": ((2,), 2),
    "moons": ((2,), 2),
    "circles": ((2,), 2),
}

# A rule takes a value and returns None when it is allowed, else what is allowed.
Rule = Callable[[object], "str | None"]


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def integer(lo: int = 1, hi: int = MAX_INT, null: bool = False) -> Rule:
    def rule(v):
        if (v is None and null) or (_is_int(v) and lo <= v <= hi):
            return None
        if _is_int(v) and v > hi:
            return f"must be at most {hi}"
        return f"must be an integer >= {lo}" + (" or null" if null else "")

    return rule


def number(lo=None, hi=None, lo_open=False, hi_open=False, null=False, extra: str = "") -> Rule:
    if lo is not None and hi is not None:
        allowed = f"a number in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    elif lo is not None:
        allowed = f"a number {'>' if lo_open else '>='} {lo}"
    else:
        allowed = "a number"

    def rule(v):
        if v is None and null:
            return None
        ok = _is_number(v) and (lo is None or (v > lo if lo_open else v >= lo)) and (
            hi is None or (v < hi if hi_open else v <= hi))
        return None if ok else f"must be {allowed}{' or null' if null else ''}{extra}"

    return rule


def boolean(v):
    return None if isinstance(v, bool) else "must be true or false"


def one_of(*options, null: bool = False) -> Rule:
    def rule(v):
        if (v is None and null) or (isinstance(v, str) and v in options):
            return None
        hint = did_you_mean(v, options) if isinstance(v, str) else ""
        return f"must be one of {', '.join(options)}{' or null' if null else ''}{hint}"

    return rule


def int_list(lo: int = 1, nonempty: bool = False, example: str = "[100] or [50, 50]") -> Rule:
    def rule(v):
        if isinstance(v, list) and (v or not nonempty) and all(_is_int(x) and lo <= x <= MAX_INT for x in v):
            return None
        return f"must be a {'non-empty ' if nonempty else ''}list of integers >= {lo}, e.g. {example}"

    return rule


def per_block(rule: Rule) -> Rule:
    """For a CNN (a model with `channels`): one value for every block, or a list with one per block
    (the CNN checks the list's length). For other models, one value."""

    def check(v):
        if not isinstance(v, list):
            return rule(v)
        problem = next((p for p in map(rule, v) if p), None) if v else "must not be an empty list"
        return f"{problem}, in each entry of the list" if problem else None

    check.scalar = rule
    return check


def betas(v):
    ok = isinstance(v, list) and len(v) == 2 and all(_is_number(b) and 0 <= b < 1 for b in v)
    return None if ok else "must be two numbers in [0, 1), e.g. [0.9, 0.999]"


def class_weights(v):
    ok = v is None or v == "balanced" or (isinstance(v, list) and v and all(_is_number(w) and w >= 0 for w in v))
    return None if ok else "must be null, balanced, or a list of weights >= 0, one per class"


def path_not_file(v):
    if not isinstance(v, str) or not v:
        return "must be a folder path"
    return "must be a folder, but it is a file" if Path(v).expanduser().is_file() else None


def weights_source(v):
    if v is None or str(v).lower() in ("none", "null", "default"):
        return None
    return None if Path(str(v)).expanduser().is_file() else "must be none, default, or the path of an existing weights file"


def _activations() -> list[str]:
    from dlrun.models import ACTIVATIONS

    return list(ACTIVATIONS)


def activation(v):
    return one_of(*_activations())(v)


GAIN_NONLINEARITIES = ("linear", "sigmoid", "tanh", "relu", "leaky_relu", "selu", "elu", "gelu",
                       "conv1d", "conv2d", "conv3d")

# Rules by full key. A key missing from the composed config (another model's option, say) is skipped;
# a key the config has but this table does not is left to the dry build below.
SCHEMA: dict[str, Rule] = {
    "seed": integer(lo=0, hi=2**63 - 1),
    "resume": lambda v: None if v is None or (isinstance(v, str) and v) else "must be a run directory or latest",
    # trainer
    "trainer.epochs": integer(1),
    "trainer.batch_size": integer(1),
    "trainer.eval_batch_size": integer(1),
    "trainer.val_fraction": number(0, 1, lo_open=True, hi_open=True),
    "trainer.monitor": one_of(*MONITORS),
    "trainer.mode": one_of("max", "min"),
    "trainer.log_every_n_steps": integer(1),
    "trainer.devices": integer(1),
    "trainer.precision": lambda v: None if str(v) in ("32", "bf16", "16", "auto") and not isinstance(v, (bool, float))
    else "must be 32, bf16, 16 or auto",
    "trainer.channels_last": boolean,
    "trainer.compile": boolean,
    "trainer.scale_lr": boolean,
    "trainer.dist_timeout_s": number(0, lo_open=True),
    "trainer.early_stopping.patience": integer(1, null=True, hi=MAX_INT),
    "trainer.early_stopping.monitor": one_of(*TRAIN_OR_VAL),
    "trainer.early_stopping.mode": one_of("max", "min"),
    "trainer.early_stopping.min_delta": number(0),
    "trainer.grad_clip.max_norm": number(0, lo_open=True, null=True),
    "trainer.grad_clip.max_value": number(0, lo_open=True, null=True),
    "trainer.l1": number(0),
    "trainer.label_smoothing": number(0, 1, hi_open=True),
    "trainer.class_weights": class_weights,
    # logging
    "logging.confusion_matrix_every": integer(0),
    "logging.hparams": boolean,
    "logging.grad_norm": boolean,
    "logging.histograms_every": integer(0),
    "logging.weight_images": boolean,
    "logging.misclassified": integer(0),
    "logging.graph": boolean,
    # optimizer: torch.optim's argument names, whichever optimizer has them
    "optimizer.lr": number(0, lo_open=True),
    "optimizer.momentum": number(0, 1, hi_open=True),
    "optimizer.dampening": number(0, 1),
    "optimizer.nesterov": boolean,
    "optimizer.weight_decay": number(0),
    "optimizer.betas": betas,
    "optimizer.eps": number(0),
    "optimizer.alpha": number(0, 1),
    "optimizer.rho": number(0, 1),
    "optimizer.centered": boolean,
    "optimizer.amsgrad": boolean,
    "optimizer.lr_decay": number(0),
    "optimizer.initial_accumulator_value": number(0),
    # model: the options of dlrun's models, whichever model has them
    "model.hidden_sizes": int_list(1),
    "model.channels": int_list(1, nonempty=True, example="[32, 64]"),
    "model.activation": per_block(activation),
    "model.dropout": per_block(number(0, 1, hi_open=True)),
    "model.batch_norm": per_block(boolean),
    "model.kernel_size": per_block(integer(1)),
    "model.stride": per_block(integer(1)),
    "model.padding": per_block(integer(0, null=True)),
    "model.pooling": per_block(one_of("max", "avg", "none")),
    "model.pool_size": per_block(integer(1)),
    "model.head_hidden": integer(0),
    "model.name": lambda v: None if isinstance(v, str) and v else "must be a model name, e.g. resnet18",
    "model.weights": weights_source,
    "model.freeze_backbone": boolean,
    "model.resize": integer(1, null=True),
    # initializer
    "initializer.zero_bias": boolean,
    "initializer.fn.nonlinearity": one_of(*GAIN_NONLINEARITIES),
    "initializer.fn.mode": one_of("fan_in", "fan_out"),
    "initializer.fn.gain": number(),
    "initializer.fn.std": number(0),
    "initializer.fn.mean": number(),
    "initializer.fn.a": number(),
    "initializer.fn.b": number(),
    "initializer.fn.val": number(),
    # scheduler
    "scheduler.interval": one_of("step", "epoch"),
    "scheduler.monitor": one_of(*MONITORS),
    "scheduler.fn.gamma": number(0, lo_open=True),
    "scheduler.fn.step_size": integer(1),
    "scheduler.fn.milestones": int_list(1, nonempty=True, example="[10, 15]"),
    "scheduler.fn.warmup_epochs": number(0),
    "scheduler.fn.min_lr": number(0),
    "scheduler.fn.factor": number(0, 1, lo_open=True, hi_open=True),
    "scheduler.fn.patience": integer(0),
    "scheduler.fn.threshold": number(0),
    "scheduler.fn.pct_start": number(0, 1, lo_open=True, hi_open=True),
    "scheduler.fn.max_lr": number(0, lo_open=True),
    "scheduler.fn.div_factor": number(0, lo_open=True),
    "scheduler.fn.final_div_factor": number(0, lo_open=True),
    "scheduler.fn.anneal_strategy": one_of("cos", "linear"),
    "scheduler.fn.cycle_momentum": boolean,
    # dataset
    "dataset.name": lambda v: None if isinstance(v, str) and v else "must be a dataset name, e.g. digits or mnist",
    "dataset.root": path_not_file,
    "dataset.download": boolean,
    "dataset.test_fraction": number(0, 1, lo_open=True, hi_open=True),
    "dataset.split_seed": integer(0),
    "dataset.resize": lambda v: None if v is None or integer(1)(v) is None or (int_list(1)(v) is None and len(v) == 2)
    else "must be null, a size in pixels (32) or [height, width]",
    "dataset.normalize": one_of("dataset", "imagenet"),
    "dataset.epochs": integer(1),
    "dataset.channels": lambda v: None if v in (1, 3) and not isinstance(v, bool) else "must be 1 (greyscale) or 3 (RGB)",
    "dataset.num_workers": integer(0),
    "dataset.n_samples": integer(2),
    "dataset.num_classes": integer(2),
    "dataset.noise": number(0),
    "dataset.factor": number(0, 1, lo_open=True, hi_open=True),
    "dataset.seed": integer(0),
    "dataset.augment.crop_padding": integer(0),
    "dataset.augment.hflip": boolean,
    "dataset.augment.rotate": number(0, 180),
    "dataset.augment.translate": number(0, 1, hi_open=True),
    # device
    "device.type": one_of("auto", "cpu", "cuda", "mps"),
    "device.index": integer(0, null=True),
}

# What each `_target_` must be: the key, what kind of thing, and a test on the located object.
TARGETS = {
    "model": ("model class", callable),
    "optimizer": ("optimizer (a torch.optim.Optimizer class)", lambda obj: _is_subclass(obj, "torch.optim", "Optimizer")),
    "initializer.fn": ("initialisation function", callable),
    "scheduler.fn": ("lr scheduler", callable),
}


# Keys every run reads; `~KEY` on the command line can delete them.
REQUIRED = ("seed", "trainer.epochs", "trainer.batch_size", "trainer.eval_batch_size", "trainer.val_fraction",
            "trainer.monitor", "trainer.mode", "trainer.log_every_n_steps", "logging", "dataset.name",
            "model._target_", "optimizer._target_", "initializer.fn", "initializer.zero_bias", "device.type")


def check_config(cfg) -> None:
    """Raise ConfigError for the first value in `cfg` that is not allowed."""
    values = _resolve(cfg)
    for key in REQUIRED:
        if not _lookup(values, key)[0]:
            raise DlrunError(f"{key}: missing from the config, and every run needs it (removed with ~{key.split('.')[0]}?)")
    is_cnn = "channels" in (values.get("model") or {})
    for key, rule in SCHEMA.items():
        found, value = _lookup(values, key)
        if found:
            problem = (rule if is_cnn else getattr(rule, "scalar", rule))(value)
            if problem:
                raise ConfigError(key, _show(value), problem)
    _check_combinations(values)
    for key, (kind, test) in TARGETS.items():
        found, node = _lookup(values, key)
        if found and isinstance(node, dict) and "_target_" in node:
            locate(f"{key}._target_", node["_target_"], kind, test)
    dataset = values.get("dataset") or {}
    known = DATASET_SHAPES.get(dataset.get("name"))
    if known:
        shape, num_classes = known
        num_classes = dataset.get("num_classes", num_classes)
        resize = dataset.get("resize")
        if resize and len(shape) == 3:
            shape = (shape[0], *(resize if isinstance(resize, list) else [resize, resize]))
        check_build(values, shape, num_classes)


def _check_combinations(values: dict) -> None:
    opt = values.get("optimizer") or {}
    if opt.get("nesterov") and (not opt.get("momentum") or opt.get("dampening")):
        raise ConfigError("optimizer.nesterov", "true", f"needs optimizer.momentum > 0 and optimizer.dampening=0 "
                          f"(they are {_show(opt.get('momentum'))} and {_show(opt.get('dampening', 0))})")
    clip = (values.get("trainer") or {}).get("grad_clip") or {}
    if clip.get("max_norm") is not None and clip.get("max_value") is not None:
        raise ConfigError("trainer.grad_clip", _show(clip), "set max_norm or max_value, not both")
    weights = (values.get("trainer") or {}).get("class_weights")
    known = DATASET_SHAPES.get((values.get("dataset") or {}).get("name"))
    if isinstance(weights, list) and known and len(weights) != known[1]:
        raise ConfigError("trainer.class_weights", _show(weights), f"must have {known[1]} weights, one per class")


def locate(key: str, target, kind: str, test=callable):
    """The object a `_target_` names; a ConfigError with the closest valid name when there is none."""
    from hydra._internal.utils import _locate  # get_object's own lookup, without its error log

    if not isinstance(target, str) or not target:
        raise ConfigError(key, _show(target), f"must be the dotted name of {_a(kind)}")
    try:
        obj = _locate(target)
    except Exception:
        module_name, _, _ = target.rpartition(".")
        try:
            module = importlib.import_module(module_name)
            names = [f"{module_name}.{n}" for n in dir(module) if not n.startswith("_")]
        except Exception:
            names = []
        raise ConfigError(key, target, f"no such {kind}{did_you_mean(target, names)}") from None
    if not test(obj):
        raise ConfigError(key, target, f"is not {_a(kind)}")
    return obj


def check_build(values: dict, in_shape, num_classes: int) -> None:
    """Build the model, initializer and optimizer on the meta device and push a batch of 2 through the model.

    The meta device computes shapes without memory or arithmetic, so a ResNet at 224 costs milliseconds.
    A model that cannot run on it (it reads values, say) is left to the real build."""
    import torch
    from hydra.utils import instantiate

    from dlrun.initializers import initialize

    model_cfg = dict(values["model"])
    if "weights" in model_cfg:
        model_cfg["weights"] = "none"  # the real build loads them; the shapes are the same
    model_target = model_cfg.get("_target_")
    _check_arguments("model", model_target, model_cfg, supplied=("in_shape", "num_classes"))
    with torch.device("meta"):
        try:
            model = instantiate(model_cfg, in_shape=tuple(in_shape), num_classes=num_classes)
        except Exception as err:
            return _build_failed(err, "model", model_target, f"cannot be built for {_size(in_shape)} inputs")
        try:
            out = model(torch.zeros(2, *in_shape))
        except Exception as err:
            return _build_failed(err, "model", model_target, f"cannot take {_size(in_shape)} inputs")
        if tuple(getattr(out, "shape", ())) != (2, num_classes):
            raise ConfigError("model", model_target, f"must output (batch, {num_classes}) logits; "
                              f"it gives {tuple(getattr(out, 'shape', ()))} for a batch of 2")
        fn_cfg = (values.get("initializer") or {}).get("fn")
        if fn_cfg:
            _check_arguments("initializer.fn", fn_cfg.get("_target_"), fn_cfg, supplied=("tensor",), skip_first=True)
            try:
                initialize(model, instantiate(fn_cfg), bool(values["initializer"].get("zero_bias")))
            except Exception as err:
                return _build_failed(err, "initializer.fn._target_", fn_cfg.get("_target_"), "fails on this model")
        opt_cfg = values.get("optimizer")
        if opt_cfg:
            _check_arguments("optimizer", opt_cfg.get("_target_"), opt_cfg, supplied=("params",))
            try:
                instantiate(opt_cfg)(params=[p for p in model.parameters() if p.requires_grad])
            except Exception as err:
                return _build_failed(err, "optimizer._target_", opt_cfg.get("_target_"), "cannot be built")


def _check_arguments(group: str, target, node: dict, supplied=(), skip_first: bool = False) -> None:
    """Every key of a group must be an argument of its `_target_`: a typo names the closest one."""
    try:
        params = dict(inspect.signature(locate(f"{group}._target_", target, "callable")).parameters)
    except (TypeError, ValueError):  # builtins without a signature
        return
    if skip_first and params:
        params.pop(next(iter(params)))
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    names = [n for n in params if n not in ("self", *supplied)]
    for key, value in node.items():
        if not (key.startswith("_") and key.endswith("_")) and key not in params:
            raise ConfigError(f"{group}.{key}", _show(value), f"is not an argument of {target}"
                              f"{did_you_mean(key, names)} (its arguments: {', '.join(names) or 'none'})")


def _build_failed(err: Exception, key: str, target, what: str) -> None:
    from hydra.errors import InstantiationException

    cause = err.__cause__ if isinstance(err, InstantiationException) and err.__cause__ else err
    if isinstance(cause, DlrunError):
        raise cause
    text = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
    if isinstance(cause, NotImplementedError) or "meta" in text.lower():
        return None  # the meta device cannot judge this model; the real build will
    raise ConfigError(key, target, f"{what}: {text}") from err


def _resolve(cfg) -> dict:
    """The config as plain Python values, with every ${...} resolved; a broken one names its key."""
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "config"
        raw = _lookup(OmegaConf.to_container(cfg, resolve=False), key)[1]
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(key, raw, f"cannot be resolved ({message})") from None


def _lookup(values: dict, key: str):
    node = values
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _show(value) -> str:
    """A value as the user would type it on the command line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ",".join(_show(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_show(v)}" for k, v in value.items()) + "}"
    return str(value)


def _size(in_shape) -> str:
    return "x".join(str(d) for d in in_shape[1:]) + f" ({in_shape[0]}-channel)" if len(in_shape) == 3 else str(tuple(in_shape))


def _a(noun: str) -> str:
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"


def _is_subclass(obj, module: str, name: str) -> bool:
    base = getattr(importlib.import_module(module), name)
    return inspect.isclass(obj) and issubclass(obj, base)


def _check(ok: bool, key: str, value, allowed: str) -> None:
    if not ok:
        raise ConfigError(key, value, allowed)
