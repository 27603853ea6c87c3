"""What a run trains, built from the config in one place: the model and its initialisation, the
optimizer and the losses. The real run, `dlrun eval` and the dry check before a run all use it.

The dry check builds the same things (on the meta device, or on the CPU: check_build says when) and pushes
a batch of 2 through the model, so that a model that cannot take the data, an initializer that fails on it
or an optimizer argument that is wrong stops the run before any data is read."""

import contextlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch
from hydra.errors import InstantiationException
from hydra.utils import get_object, instantiate
from omegaconf import OmegaConf
from torch import nn

from dlrun.config.check import check_arguments, check_config, locate
from dlrun.config.schema import MOVED_KEYS, metric_names
from dlrun.core.errors import ConfigError, DlrunError
from dlrun.core.nested import lookup
from dlrun.core.text import show_value
from dlrun.data import known_shape, known_task
from dlrun.engine.eager import dynamo_loaded
from dlrun.engine.optim import build_loss, build_optimizer, check_class_lists
from dlrun.model.initializers import initialize
from dlrun.model.losses import eval_loss, task_of


@dataclass
class Built:
    model: nn.Module
    optimizer: torch.optim.Optimizer
    train_loss: nn.Module  # the `loss` group's, with its label smoothing and class weights
    eval_loss: nn.Module  # val and test: the plain task loss (cross-entropy, or MSE), comparable across runs
    init_fn: Callable | None
    initialized: list[str]  # the layers init_fn reached


def make_model(model_cfg, in_shape, outputs: int, recursive: bool = True, num_classes: int | None = None) -> nn.Module:
    """The model a `model` config names, for inputs of `in_shape` and `outputs` outputs: the class count, or 1
    for a regression or a binary head (of `num_classes` = 2). A model of dlrun's makes a binary head itself
    (`binary_head`); a user's own gets num_classes=1."""
    node = OmegaConf.to_container(model_cfg, resolve=True) if OmegaConf.is_config(model_cfg) else dict(model_cfg)
    if "binary_head" in node and "binary_head" not in inspect.signature(get_object(node["_target_"])).parameters:
        node.pop("binary_head")  # a user's own class on a dlrun model config: it gets num_classes=1 instead
    if "binary_head" in node and outputs == 1 and num_classes == 2:
        node["binary_head"] = True  # dlrun's own models make the one-logit head themselves
        outputs = 2
    return instantiate(node, in_shape=tuple(in_shape), num_classes=outputs, _recursive_=recursive)


def model_outputs(cfg, num_classes: int) -> int:
    """How many outputs the model has: one for a regression, and one logit for a binary head (model.binary_head,
    or a one-logit loss such as bce) on two classes; else one per class."""
    if cfg.get("task", "classification") == "regression":
        return 1
    return 1 if num_classes == 2 and binary_head(cfg) else num_classes


def binary_head(cfg) -> bool:
    loss = cfg.get("loss") or {}
    one_logit = isinstance(loss.get("_target_"), str) and getattr(
        locate("loss._target_", loss["_target_"], "loss"), "one_logit", False
    )
    return bool((cfg.get("model") or {}).get("binary_head")) or bool(one_logit)


def init_weights(model: nn.Module, init_cfg) -> tuple[Callable | None, list[str]]:
    """The `initializer` group applied to the model: the function, and the layers it reached."""
    fn = instantiate(init_cfg["fn"]) if init_cfg.get("fn") else None
    return fn, initialize(model, fn, bool(init_cfg.get("zero_bias")))


def make_optimizer(opt_cfg, model: nn.Module) -> torch.optim.Optimizer:
    return build_optimizer(opt_cfg, [p for p in model.parameters() if p.requires_grad])


def build(cfg, in_shape, num_classes: int, device: torch.device, train_labels: torch.Tensor) -> Built:
    task = cfg.get("task", "classification")
    check_loss(cfg, num_classes)
    model = make_model(cfg.model, in_shape, model_outputs(cfg, num_classes), num_classes=num_classes)
    init_fn, initialized = init_weights(model, cfg.initializer)
    model.to(device)
    if cfg.trainer.get("channels_last", False) and len(in_shape) == 3:
        model.to(memory_format=torch.channels_last)  # the loaders give channels-last batches to match
    optimizer = make_optimizer(cfg.optimizer, model)
    train_loss = build_loss(cfg.loss, train_labels, num_classes, task).to(device)
    return Built(model, optimizer, train_loss, eval_loss(task).to(device), init_fn, initialized)


def check_loss(cfg, num_classes: int | None) -> None:
    """The loss fits the task (and a one-logit loss, two classes): one line naming both when it does not."""
    task, loss = cfg.get("task", "classification"), cfg.get("loss") or {}
    loss = OmegaConf.to_container(loss, resolve=True) if OmegaConf.is_config(loss) else loss
    target = loss.get("_target_")
    loss_cls = locate("loss._target_", target, "loss")
    name = getattr(loss_cls, "name", target)
    own, dataset = task_of(loss_cls), (cfg.get("dataset") or {}).get("name")
    if known_task(cfg.get("dataset") or {}) not in (None, task):
        raise ConfigError("task", task, f"does not fit dataset={dataset}, a {known_task(cfg['dataset'])} set")
    if own is not None and own != task:
        allowed = "mse, mae or huber" if task == "regression" else "cross_entropy, focal, multi_margin or bce"
        raise ConfigError("loss", name, f"is a {own} loss, and dataset={dataset} is a {task} (task={task}): use loss={allowed}")
    _check_monitors(cfg.get("trainer") or {}, task)
    if num_classes is not None and task == "classification" and num_classes != 2 and binary_head(cfg):
        key, value = ("model.binary_head", "true") if (cfg.get("model") or {}).get("binary_head") else ("loss", name)
        raise ConfigError(
            key,
            value,
            f"trains one logit, for two classes; dataset={dataset} has {num_classes}: loss=cross_entropy, focal or multi_margin",
        )
    if num_classes is not None and task == "classification":
        check_class_lists(loss, num_classes)


def check(cfg) -> dict:
    """Every check before a run: the config's rules, then the dry build where the data's shape is known. The
    config as plain values, every ${...} resolved."""
    values = check_config(cfg)
    for old, new in MOVED_KEYS.items():  # `+trainer.label_smoothing=...` adds the old key, which nothing reads
        if lookup(values, old)[0]:
            raise ConfigError(old, show_value(lookup(values, old)[1]), f"moved; it is now {new} ({new}=...)")
    shape = known_shape(values.get("dataset") or {})
    check_loss(values, shape[1] if shape is not None else None)
    if shape is not None:
        check_build(values, *shape)
    return values


def _check_monitors(trainer, task: str) -> None:
    """A monitored metric the task has: f1 is no regression's, rmse no classifier's."""
    names = metric_names(task)
    for key, value in (
        ("trainer.monitor", trainer.get("monitor")),
        ("trainer.early_stopping.monitor", (trainer.get("early_stopping") or {}).get("monitor")),
    ):
        if isinstance(value, str) and value.split("/", 1)[-1] not in names:
            split = value.split("/", 1)[0]
            raise ConfigError(key, value, f"is not a {task} metric: one of {', '.join(f'{split}/{m}' for m in names)}")


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
    """Build the model, initializer and optimizer and push a batch of 2 through the model: on the meta device,
    which costs no memory or arithmetic, once torch._dynamo is loaded (torchvision loads it), for the meta
    device's kernels are Python decompositions whose first use imports it (about 1.5 s); otherwise on the CPU,
    where the models a CPU trains take milliseconds, and the real build allocates as much right after."""
    outputs = model_outputs(values, num_classes)
    model_cfg = dict(values["model"])
    if "weights" in model_cfg:
        model_cfg["weights"] = "none"  # the real build loads them; the shapes are the same
    target, size = model_cfg.get("_target_"), _size(in_shape)
    # binary_head is dlrun's: a class of the user's own that lacks it gets num_classes=1 instead (make_model)
    own_keys = {k: v for k, v in model_cfg.items() if k != "binary_head"}
    check_arguments("model", target, own_keys, supplied=("in_shape", "num_classes"))
    fn_cfg, opt_cfg = values["initializer"].get("fn"), values["optimizer"]
    if fn_cfg:
        check_arguments("initializer.fn", fn_cfg.get("_target_"), fn_cfg, supplied=("tensor",), skip_first=True)
    check_arguments("optimizer", opt_cfg.get("_target_"), opt_cfg, supplied=("params",))
    try:
        with torch.device("meta" if dynamo_loaded() else "cpu"):
            with _judged("model", target, f"cannot be built for {size} inputs"):
                model = make_model(model_cfg, in_shape, outputs, num_classes=num_classes)
            with _judged("model", target, f"cannot take {size} inputs"), torch.no_grad():
                out = model(torch.zeros(2, *in_shape))
            if tuple(getattr(out, "shape", ())) != (2, outputs):
                raise ConfigError(
                    "model",
                    target,
                    f"must output (batch, {outputs}) {'values' if outputs == 1 else 'logits'}; "
                    f"it gives {tuple(getattr(out, 'shape', ()))} for a batch of 2",
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
