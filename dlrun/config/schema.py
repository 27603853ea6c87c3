"""What a run's config may hold: a rule per key (type and range), the keys every run needs, and the names
that other layers read from here (metrics, precisions, augmentations, the multi-process keys).

A rule takes a value and returns None when it is allowed, else what is allowed."""

import math
from collections.abc import Callable
from pathlib import Path

from dlrun.core.text import did_you_mean

# The metrics of every split, as history.csv, metrics.json and TensorBoard name them (split/metric).
# precision, recall and f1 alone are macro averages (each class counts the same), as in runs made before
# the micro (pooled counts) and weighted (classes by support) averages; auroc and average_precision are
# one class against the rest, macro-averaged, or the positive class's for two classes.
METRIC_NAMES = (
    "loss",
    "accuracy",
    "precision",
    "recall",
    "f1",
    "precision_micro",
    "recall_micro",
    "f1_micro",
    "precision_weighted",
    "recall_weighted",
    "f1_weighted",
    "auroc",
    "average_precision",
)
# A regression's: loss (the MSE of the scaled target), then mean absolute error, root mean squared error and
# the coefficient of determination, in the target's own units.
REGRESSION_METRIC_NAMES = ("loss", "mae", "rmse", "r2")
MONITORS = [f"val/{m}" for m in (*METRIC_NAMES, *REGRESSION_METRIC_NAMES[1:])]
TRAIN_OR_VAL = [f"{split}/{m}" for split in ("train", "val") for m in (*METRIC_NAMES, *REGRESSION_METRIC_NAMES[1:])]
# What a run learns: a class per input (logits), or a number per input (one output, in the target's units).
TASKS = ("classification", "regression")
# An Optuna search's pruners (hydra.sweeper.pruner); each trial's `search` block names the one its study uses.
PRUNERS = ("none", "median", "hyperband")


def metric_names(task: str) -> tuple[str, ...]:
    return REGRESSION_METRIC_NAMES if task == "regression" else METRIC_NAMES


# trainer.precision: fp32, bf16 autocast, fp16 autocast with loss scaling, or the fastest the hardware runs natively.
PRECISIONS = ("32", "bf16", "16", "auto")
MAX_INT = 2**31 - 1  # sizes and counts beyond this are typos, and overflow torch's indexing

Rule = Callable[[object], "str | None"]


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def integer(lo: int = 1, hi: int = MAX_INT, null: bool = False, extra: str = "") -> Rule:
    def rule(v):
        if (v is None and null) or (_is_int(v) and lo <= v <= hi):
            return None
        if _is_int(v) and v > hi:
            return f"must be at most {hi}"
        return f"must be an integer >= {lo}" + (" or null" if null else "") + extra

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
        ok = (
            _is_number(v)
            and (lo is None or (v > lo if lo_open else v >= lo))
            and (hi is None or (v < hi if hi_open else v <= hi))
        )
        return None if ok else f"must be {allowed}{' or null' if null else ''}{extra}"

    return rule


def boolean(v):
    return None if isinstance(v, bool) else "must be true or false"


def mapping(example: str, null: bool = False) -> Rule:
    """A block of keys (a dict), as the shipped config has it: `trainer.grad_clip=1` is a typo for one of its keys."""

    def rule(v):
        if isinstance(v, dict) or (v is None and null):
            return None
        return f"must be a block of keys{' or null' if null else ''}; set one of them, e.g. {example}"

    return rule


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


def focal_alpha(v):
    ok = v is None or (_is_number(v) and 0 <= v <= 1) or (isinstance(v, list) and v and all(_is_number(a) and a >= 0 for a in v))
    return None if ok else "must be null, a number in [0, 1] (two classes: the positive's weight), or one weight >= 0 per class"


def column_names(v):
    ok = isinstance(v, list) and all(isinstance(c, str | int) for c in v)
    return None if ok else "must be a list of column names, e.g. [id]"


def path_not_file(v):
    if not isinstance(v, str) or not v:
        return "must be a folder path"
    return "must be a folder, but it is a file" if Path(v).expanduser().is_file() else None


def weights_source(v):
    if v is None or str(v).lower() in ("none", "null", "default"):
        return None
    return None if Path(str(v)).expanduser().is_file() else "must be none, default, or the path of an existing weights file"


def precision(v):
    ok = str(v) in PRECISIONS and not isinstance(v, (bool, float))
    return None if ok else f"must be {', '.join(PRECISIONS[:-1])} or {PRECISIONS[-1]}"


# dataset.augment: on-device batch augmentation of images (dlrun.data.augment), every option off at its zero.
AUGMENT: dict[str, Rule] = {
    "crop_padding": integer(0, extra=" (pixels of zero padding)"),
    "hflip": boolean,
    "rotate": number(0, 180, extra=" (degrees)"),
    "translate": number(0, 1, hi_open=True, extra=" (a fraction of the image size)"),
}

# The keys of a run on several processes (DDP), read by the launcher and by every rank.
DDP: dict[str, Rule] = {
    "trainer.devices": integer(1, extra=" (processes to train on)"),
    "trainer.scale_lr": boolean,
    "trainer.dist_timeout_s": number(0, lo_open=True, extra=" (seconds)"),
}

# `dlrun lr-find`: the range test's keys (lr_find.yaml); the rules that pick an lr from its curve.
LR_RULES = ("valley", "steepest")
LR_FIND: dict[str, Rule] = {
    "lr_find": mapping("lr_find.end_lr=1"),
    "lr_find.start_lr": number(0, lo_open=True),
    "lr_find.end_lr": number(0, lo_open=True),
    "lr_find.num_steps": integer(2, extra=" (optimizer steps of the test)"),
    "lr_find.diverge": number(1, lo_open=True, null=True, extra=" (null: never stop early)"),
    "lr_find.smoothing": number(0, 1, hi_open=True, extra=" (0: no smoothing)"),
    "lr_find.rule": one_of(*LR_RULES),
}

# Rules by full key. A key missing from the composed config (another model's option, say) is skipped;
# a key the config has but this table does not is left to the dry build below.
SCHEMA: dict[str, Rule] = {
    "seed": integer(lo=0, hi=2**63 - 1),
    "task": one_of(*TASKS),
    "resume": lambda v: None if v is None or (isinstance(v, str) and v) else "must be a run directory, its best.pt, or latest",
    # set by hparams_search=optuna's sweeper for each trial
    "search": mapping("search={storage:'sqlite:///optuna.db',study:dlrun,trial:0}", null=True),
    "search.trial": integer(0),
    "search.pruner": one_of(*PRUNERS),
    "search.warmup_epochs": integer(0),
    "search.startup_trials": integer(0),
    # trainer
    "trainer.epochs": integer(1),
    "trainer.batch_size": integer(1),
    "trainer.eval_batch_size": integer(1),
    "trainer.val_fraction": number(0, 1, lo_open=True, hi_open=True),
    "trainer.monitor": one_of(*MONITORS),
    "trainer.mode": one_of("max", "min"),
    "trainer.log_every_n_steps": integer(1),
    "trainer.precision": precision,
    "trainer.channels_last": boolean,
    "trainer.compile": boolean,
    **DDP,
    "trainer.early_stopping.patience": integer(1, null=True, hi=MAX_INT),
    "trainer.early_stopping.monitor": one_of(*TRAIN_OR_VAL),
    "trainer.early_stopping.mode": one_of("max", "min"),
    "trainer.early_stopping.min_delta": number(0),
    "trainer.grad_clip": mapping("trainer.grad_clip.max_norm=1.0"),
    "trainer.grad_clip.max_norm": number(0, lo_open=True, null=True),
    "trainer.grad_clip.max_value": number(0, lo_open=True, null=True),
    "trainer.l1": number(0),
    "trainer.limit_batches": integer(1, null=True),
    "trainer.overfit_batches": integer(0),
    # loss: the arguments of dlrun's losses, whichever loss has them
    "loss.label_smoothing": number(0, 1, hi_open=True),
    "loss.class_weights": class_weights,
    "loss.gamma": number(0),
    "loss.alpha": focal_alpha,
    "loss.margin": number(0),
    "loss.p": lambda v: None if v in (1, 2) and not isinstance(v, bool) else "must be 1 or 2",
    "loss.pos_weight": number(0, lo_open=True, null=True),
    "loss.delta": number(0, lo_open=True),
    # logging
    "logging": mapping("logging.grad_norm=false"),
    "logging.confusion_matrix_every": integer(0),
    "logging.pr_curves": integer(0),
    "logging.hparams": boolean,
    "logging.grad_norm": boolean,
    "logging.histograms_every": integer(0),
    "logging.weight_images": boolean,
    "logging.misclassified": integer(0),
    "logging.graph": boolean,
    "logging.boundary_every": integer(0),
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
    "model.binary_head": boolean,
    "model.resize": integer(1, null=True),
    # initializer
    "initializer.zero_bias": boolean,
    "initializer.fn": mapping("initializer=kaiming_normal, or initializer.fn=null for PyTorch's own", null=True),
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
    "dataset.resize": lambda v: (
        None
        if v is None or integer(1)(v) is None or (int_list(1)(v) is None and len(v) == 2)
        else "must be null, a size in pixels (32) or [height, width]"
    ),
    "dataset.normalize": one_of("dataset", "imagenet"),
    "dataset.epochs": integer(1),
    "dataset.channels": lambda v: None if v in (1, 3) and not isinstance(v, bool) else "must be 1 (greyscale) or 3 (RGB)",
    "dataset.num_workers": integer(0),
    "dataset.skip_bad": boolean,
    "dataset.n_samples": integer(2),
    "dataset.num_classes": integer(2),
    "dataset.noise": number(0),
    "dataset.factor": number(0, 1, lo_open=True, hi_open=True),
    "dataset.seed": integer(0),
    "dataset.function": one_of("sin", "cubic", "square", "abs", "step", "sinc", "exp"),
    "dataset.range": lambda v: (
        None
        if isinstance(v, list) and len(v) == 2 and all(_is_number(x) for x in v) and v[0] < v[1]
        else "must be [low, high], two numbers with low < high"
    ),
    "dataset.path": lambda v: None if v is None or (isinstance(v, str) and v) else "must be the path of a CSV file",
    "dataset.drop": column_names,
    "dataset.categorical": column_names,
    "dataset.fill": one_of("mean", "drop", null=True),
    "dataset.imbalance": number(0, 1, lo_open=True, null=True, extra=" (the fraction of its examples the last class keeps)"),
    "dataset.class_counts": lambda v: (
        None if v is None or isinstance(v, list | dict) else "must be null, a list with one count per class, or {class: count}"
    ),
    **{f"dataset.augment.{key}": rule for key, rule in AUGMENT.items()},
    # device
    "device.type": one_of("auto", "cpu", "cuda", "mps"),
    "device.index": integer(0, null=True),
    **LR_FIND,
}


# Keys that moved, and where they are now: an old command line gets told.
MOVED_KEYS = {"trainer.label_smoothing": "loss.label_smoothing", "trainer.class_weights": "loss.class_weights"}

# Keys every run reads; `~KEY` on the command line can delete them.
REQUIRED = (
    "seed",
    "trainer.epochs",
    "trainer.batch_size",
    "trainer.eval_batch_size",
    "trainer.val_fraction",
    "trainer.monitor",
    "trainer.mode",
    "trainer.log_every_n_steps",
    "logging",
    "dataset.name",
    "model._target_",
    "loss._target_",
    "optimizer._target_",
    "initializer.fn",
    "initializer.zero_bias",
    "device.type",
)
