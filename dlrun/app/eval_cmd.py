"""`dlrun eval PATH`: evaluate a saved model again, on the test set, the val set or another compatible
dataset, and write the metrics, the classification report and the confusion matrix into PATH/eval/.

Run directories and checkpoints are shared between people, so nothing in them may run code:
the checkpoint is read with weights_only=True, and the saved config may only name classes from an
allow-list of packages, since rebuilding the model imports and calls whatever `_target_` names."""

import inspect
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch import nn

from dlrun.config.check import locate
from dlrun.config.compose import compose_config
from dlrun.core.errors import ConfigError, DlrunError
from dlrun.core.io import write_csv, write_json
from dlrun.core.text import did_you_mean
from dlrun.data import load_data, make_loaders
from dlrun.engine import checkpoint
from dlrun.engine.build import make_model, model_outputs
from dlrun.engine.precision import Precision, resolve_device
from dlrun.engine.steps import evaluate, to_floats
from dlrun.model.losses import eval_loss
from dlrun.observe import figures
from dlrun.observe.console import Console
from dlrun.observe.metrics import scores_at, task_metrics
from dlrun.observe.tables import classification_report, write_confusion_csv

USAGE = """Usage: dlrun eval PATH [split=test|val] [dataset=NAME] [dataset.KEY=VALUE ...] [device=auto|cpu|cuda|mps]
                  [batch_size=N] [threshold=T] [--trust-config]

Evaluate a run's best.pt (or the checkpoint PATH names) again and write metrics.json,
classification_report.csv, confusion_matrix.csv and confusion_matrix.png (a regression:
predictions.png and residuals.png) into <run dir>/eval/<dataset>-<split>-<checkpoint>/.

  split=test        the dataset's test split (default), or split=val: the run's own validation split
  threshold=T       two classes: also score the positive class with `probability >= T` as positive
                    (beside 0.5); the run's metrics.json holds the threshold of best val F1
  dataset=NAME      another dataset with the same input shape and number of classes (e.g. fashion_mnist
                    for a model trained on mnist); dataset.root=DIR and other dataset.* keys also apply
  --trust-config    build the model even when its saved config names classes outside dlrun, torch,
                    torchvision and torchmetrics; only for run directories whose origin you trust

Examples:
  dlrun eval outputs/runs/2024-05-01_12-00-00_cnn_mnist
  dlrun eval outputs/runs/2024-05-01_12-00-00_cnn_mnist/last.pt split=val
  dlrun eval outputs/runs/2024-05-01_12-00-00_cnn_mnist dataset=fashion_mnist
  dlrun eval outputs/runs/2024-05-01_12-00-00_mlp_moons threshold=0.35"""

ALLOWED_PACKAGES = ("dlrun", "torch", "torchvision", "torchmetrics")
# Inside the allowed packages, but they load or compile code: refused all the same without --trust-config.
REFUSED_TARGETS = (
    "torch.hub",
    "torch.load",
    "torch.jit.load",
    "torch.package",
    "torch.utils.cpp_extension",
    "torch.ops",
    "torch.classes",
    "torch.serialization",
    "torch.export.load",
    "torch.compile",
)
OPTIONS = ("split", "dataset", "device", "batch_size", "threshold")


def main(args: list[str]) -> None:
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    trust = "--trust-config" in args
    path, *rest = [a for a in args if a != "--trust-config"]
    options, dataset_overrides = parse_options(rest)
    evaluate_checkpoint(Path(path), trust=trust, dataset_overrides=dataset_overrides, **options)


def parse_options(args: list[str]) -> tuple[dict, list[str]]:
    """`KEY=VALUE` words as typed values (OmegaConf's grammar, as `dlrun train` reads them), dataset.* apart."""
    options, dataset_overrides = {}, []
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep or not value:
            raise DlrunError(f"{arg}: expected KEY=VALUE after the path (see `dlrun eval --help`)")
        if key.startswith("dataset."):
            dataset_overrides.append(f"{key.removeprefix('dataset.')}={value}")
        elif key in OPTIONS:
            options[key] = OmegaConf.from_dotlist([arg])[key]
        else:
            raise ConfigError(
                key,
                value,
                f"is not an option of dlrun eval{did_you_mean(key, OPTIONS)} (options: {', '.join(OPTIONS)}, dataset.KEY)",
            )
    if options.get("split", "test") not in ("test", "val"):
        raise ConfigError("split", options["split"], "must be test or val")
    size = options.get("batch_size", 1)
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ConfigError("batch_size", size, "must be an integer >= 1")
    threshold = options.get("threshold", 0.5)
    if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or not 0 <= threshold <= 1:
        raise ConfigError("threshold", threshold, "must be a number in [0, 1]")
    options.update({k: str(v) for k, v in options.items() if k not in ("batch_size", "threshold")})
    return options, dataset_overrides


# Where dlrun's classes lived before its packages were layered: checkpoints saved then still name them.
MOVED = {"dlrun.models.": "dlrun.model.", "dlrun.initializers.": "dlrun.model.initializers."}


def _current_targets(node):
    """A saved model config with the `_target_` names of dlrun's classes as they are named today."""
    if isinstance(node, dict):
        return {k: _current_targets(_moved(v) if k == "_target_" else v) for k, v in node.items()}
    if isinstance(node, list):
        return [_current_targets(v) for v in node]
    return node


def _moved(target):
    for old, new in MOVED.items():
        if isinstance(target, str) and target.startswith(old):
            return new + target[len(old) :]
    return target


def check_targets(node, trust: bool, where: str = "model") -> None:
    """Every `_target_` under `node` must be in the allow-list, unless the user trusts the config."""
    if trust:
        return
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "_target_" and not allowed(value):
                raise ConfigError(
                    f"{where}._target_",
                    value,
                    f"not in the allow-list ({', '.join(p + '.' for p in ALLOWED_PACKAGES)}): building the model "
                    "would import and call it, and a shared run directory can name any code. Pass --trust-config "
                    "if you trust where this run comes from",
                )
            check_targets(value, trust, f"{where}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            check_targets(value, trust, f"{where}[{i}]")


def allowed(target) -> bool:
    if not isinstance(target, str):
        return False
    in_package = any(target == p or target.startswith(p + ".") for p in ALLOWED_PACKAGES)
    refused = any(target == r or target.startswith(r + ".") for r in REFUSED_TARGETS)
    return in_package and not refused and "._" not in target


def find_checkpoint(path: Path) -> tuple[Path, Path]:
    """(checkpoint, run directory) for a run directory (its best.pt, else last.pt) or a checkpoint file."""
    if path.is_file():
        return path, path.parent
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / name).is_file():
                return path / name, path
        raise DlrunError(f"{path}: no best.pt or last.pt in this folder; pass a run directory or a checkpoint")
    raise DlrunError(f"{path}: no such run directory or checkpoint")


def evaluate_checkpoint(
    path: Path,
    split: str = "test",
    dataset: str | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    dataset_overrides: list[str] = (),
    trust: bool = False,
    threshold: float | None = None,
) -> dict:
    ckpt_path, run_dir = find_checkpoint(path)
    state = checkpoint.load(ckpt_path)  # weights_only=True: a tampered file is refused before anything runs
    cfg = OmegaConf.create(state["config"])  # YAML through a safe loader: data only
    model_cfg = _current_targets(OmegaConf.to_container(cfg.model, resolve=True))
    check_targets(model_cfg, trust)
    data = eval_data(cfg, state, ckpt_path, dataset, dataset_overrides, batch_size)
    classes, in_shape = list(state["classes"]), tuple(state["in_shape"])
    dev = resolve_device(OmegaConf.create({"type": device, "index": None}))
    model = rebuild_model(model_cfg, state, ckpt_path, in_shape, len(classes), trust).to(dev)
    amp = Precision(cfg.trainer.get("precision", "32"), dev, model)  # as the run evaluated: same numbers
    if cfg.trainer.get("channels_last", False) and len(in_shape) == 3:
        model.to(memory_format=torch.channels_last)
    cfg.trainer.batch_size = cfg.trainer.eval_batch_size
    cfg.trainer.limit_batches, cfg.trainer.overfit_batches = None, 0  # the whole split, whatever the run used
    _check_threshold(threshold, data.task, len(classes))
    _, val_loader, test_loader = make_loaders(data, cfg, dev)
    task = data.task
    metrics = task_metrics(task, len(classes), data.target_scale).to(dev)
    stats = evaluate(model, val_loader if split == "val" else test_loader, eval_loss(task), metrics, amp)
    cm = metrics.confusion
    result = {
        "checkpoint": str(ckpt_path),
        "epoch": state["epoch"],
        "dataset": cfg.dataset.name,
        "split": split,
        "samples": len(data.val if split == "val" else data.test),
        "device": str(dev),
        "precision": amp.name,
        split: to_floats(stats),
    }
    if len(classes) == 2 and task == "classification":
        result["threshold"] = at_thresholds(metrics.scores, threshold)
    out = run_dir / "eval" / f"{cfg.dataset.name}-{split}-{ckpt_path.stem}"
    if task == "regression":
        write_regression_eval(out, result, metrics.predictions, f"{cfg.dataset.name} {split}")
    else:
        write_eval(out, result, cm, classes, f"{cfg.dataset.name} {split}")
    console = Console()
    console.summary(
        f"{ckpt_path} (epoch {state['epoch']}) on {cfg.dataset.name} {split}, {result['samples']} samples", {split: result[split]}
    )
    for name, scores in result.get("threshold", {}).items():
        console.print(
            f"{classes[1]} at threshold {scores['threshold']:g} ({name}): precision {scores['precision']:.4f} "
            f"recall {scores['recall']:.4f} f1 {scores['f1']:.4f}"
        )
    console.print(f"eval saved in {out}")
    return result


def _check_threshold(threshold, task: str, num_classes: int) -> None:
    if threshold is not None and task == "regression":
        raise ConfigError("threshold", threshold, "applies to two-class tasks; this model is a regression")
    if threshold is not None and num_classes != 2:
        raise ConfigError("threshold", threshold, f"applies to two-class tasks; this model has {num_classes} classes")


def at_thresholds(scores: tuple, threshold: float | None) -> dict:
    """The positive class's scores at 0.5 and, when asked, at the user's threshold."""
    probs, targets = scores
    positive, chance = probs[:, 1], targets == 1
    out = {"default": scores_at(positive, chance, 0.5)}
    if threshold is not None:
        out["chosen"] = scores_at(positive, chance, float(threshold))
    return out


def eval_data(cfg, state: dict, ckpt_path: Path, dataset, dataset_overrides, batch_size):
    """The data to evaluate on: the run's own dataset (its seeded val split), or another of the same shape."""
    if dataset is not None:
        cfg.dataset = compose_config("train", [f"dataset={dataset}"]).dataset
    if dataset_overrides:
        cfg.dataset = OmegaConf.merge(cfg.dataset, OmegaConf.from_dotlist(list(dataset_overrides)))
    if batch_size is not None:
        cfg.trainer.eval_batch_size = batch_size
    data = load_data(cfg.dataset, cfg.seed, cfg.trainer.val_fraction, task=cfg.get("task"))
    classes, in_shape = list(state["classes"]), tuple(state["in_shape"])
    if tuple(data.in_shape) != in_shape or data.num_classes != len(classes):
        raise ConfigError(
            "dataset",
            cfg.dataset.name,
            f"is not compatible with {ckpt_path}: its inputs are "
            f"{tuple(data.in_shape)} with {data.num_classes} classes, the model takes {in_shape} "
            f"with {len(classes)} classes",
        )
    # The model learned on inputs normalised with its training set's statistics: keep them.
    data.mean, data.std = tuple(state["mean"]), tuple(state["std"])
    return data


def rebuild_model(model_cfg: dict, state: dict, ckpt_path: Path, in_shape, num_classes: int, trust: bool) -> nn.Module:
    saved = OmegaConf.to_container(OmegaConf.create(state["config"]), resolve=True)
    # The loss says whether the model has a one-logit head; its class is looked up only where it may be imported.
    loss = saved.get("loss") or {}
    config = {
        "task": saved.get("task", "classification"),
        "model": model_cfg,
        "loss": loss if trust or allowed(loss.get("_target_")) else {},
    }
    """The run's model from its saved config, with the checkpoint's weights."""
    if "weights" in model_cfg:
        model_cfg["weights"] = "none"  # the checkpoint holds every weight; no download, no weights file
    if not trust:
        _check_module_class(model_cfg.get("_target_"))
    # Not recursive: a nested `_target_` stays data, so only the model's own class is ever called.
    model = make_model(model_cfg, in_shape, model_outputs(config, num_classes), recursive=trust, num_classes=num_classes)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        raise DlrunError(
            f"{ckpt_path}: its weights do not fit the model its config describes ({str(err).splitlines()[0]})"
        ) from err
    return model


def write_eval(out: Path, result: dict, cm, classes: list[str], title: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "metrics.json", result)
    write_csv(out / "classification_report.csv", *classification_report(cm, classes))
    write_confusion_csv(out / "confusion_matrix.csv", cm, classes)
    figures.save_figure(figures.confusion_figure(cm, classes, title), out / "confusion_matrix.png")


def write_regression_eval(out: Path, result: dict, predictions: tuple, title: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "metrics.json", result)
    pred, target = (t.cpu().numpy() for t in predictions)
    figures.save_figure(figures.predictions_figure(pred, target, title), out / "predictions.png")
    figures.save_figure(figures.residuals_figure(pred, target, title), out / "residuals.png")


def _check_module_class(target) -> None:
    obj = locate("model._target_", target, "model class")
    if not (inspect.isclass(obj) and issubclass(obj, nn.Module)):
        raise ConfigError("model._target_", target, "must be a torch.nn.Module class to be rebuilt without --trust-config")
