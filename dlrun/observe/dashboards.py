"""How runs look in TensorBoard's Custom Scalars and HParams tabs: the chart layout, the hyperparameters each
run records, and a sweep's experiment, which decides the HParams columns and metrics.

TensorBoard's HParams plugin takes its columns from an `_hparams_/experiment` summary when some run has one
(the first it finds), else it computes them from every run's session start info, marking the hyperparameters
whose values differ; it lists those first and ticks the first five columns and the first five metrics. So a run
writes only its session start and end, and a sweep, once its jobs are done, writes one experiment:
the jobs' hyperparameters with `differs` set, and the metrics in HPARAM_METRICS order, into one job's
directory (so that the sweep stays one run per job).

Nothing here imports torch: a sweep's callback writes the experiment without it."""

import json
import re
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.compat.proto import types_pb2
from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.compat.proto.tensor_pb2 import TensorProto
from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.custom_scalar import metadata as custom_scalar_metadata
from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter

from dlrun.config.schema import METRIC_NAMES
from dlrun.core.nested import flatten

STEP_TAGS = ("train/loss_step", "train/lr", "train/grad_norm")
# Open when the tab opens; the other metrics' categories start closed.
OPEN_METRICS = ("loss", "accuracy", "f1")
# First the ones HParams ticks by default (the first five): the best epoch's val scores, then test.
_LEADING_METRICS = ("best/val/f1", "best/val/accuracy", "best/val/loss", "test/f1", "test/accuracy")
HPARAM_METRICS = [
    *_LEADING_METRICS,
    *(t for m in METRIC_NAMES for t in (f"test/{m}", f"best/val/{m}") if t not in _LEADING_METRICS),
]
# A regression sweep's: its best val rmse first.
REGRESSION_HPARAM_METRICS = [t for m in ("rmse", "r2", "mae", "loss") for t in (f"best/val/{m}", f"test/{m}")]
SWEEP_EXPERIMENT_SUFFIX = ".sweep-hparams"

# Recorded for every run: what a reader compares runs by.
_MAIN = re.compile(r"seed|dataset\.name|model\..+|optimizer\.(lr|momentum|weight_decay|betas)|trainer\.(epochs|batch_size)")
# Never: where and how a run ran, not what it learned with; dataset.epochs only seeds trainer.epochs' default.
_NEVER = re.compile(
    r"(paths|logging|device|hydra)\..+|resume|dataset\.(root|epochs|download|num_workers)"
    r"|trainer\.(log_every_n_steps|eval_batch_size|dist_timeout_s|channels_last|compile)|.+\._partial_|.+\._target_"
)
# Set for every run, so they say something only when the command line chose them.
_SETTINGS = re.compile(
    r"dataset\.(test_fraction|split_seed|normalize)|scheduler\.interval"
    r"|trainer\.(val_fraction|monitor|mode|precision|devices|early_stopping\.(monitor|mode|min_delta))"
)


def exact(tag: str) -> str:
    """A custom-scalars tag regex for `tag` alone: TensorBoard matches from the start only, so that
    train/loss would also take train/loss_step."""
    return f"^{re.escape(tag)}$"


def custom_scalars_layout(metrics: Sequence[str]) -> layout_pb2.Layout:
    """One category per per-epoch metric: train and val as charts of their own with the runs overlaid, then
    the margin chart of train vs val; and the per-step curves, on their own axis of optimizer steps.

    The plugin colours a series by its run alone, so train and val of one run in one multi-line chart share a
    colour and differ only by a marker dealt out as the data arrives. Here colour is the run in every chart, the
    split is the chart, and the margin chart draws each run's val as a line with the band to its train shaded."""
    categories = [_metric_category(m) for m in metrics if m in OPEN_METRICS]
    step_charts = [layout_pb2.Chart(title=t, multiline=layout_pb2.MultilineChartContent(tag=[exact(t)])) for t in STEP_TAGS]
    categories.append(layout_pb2.Category(title="per optimizer step", chart=step_charts))
    categories += [_metric_category(m) for m in metrics if m not in OPEN_METRICS]
    return layout_pb2.Layout(category=categories)


def _metric_category(metric: str) -> layout_pb2.Category:
    splits = [
        layout_pb2.Chart(title=f"{split}/{metric}", multiline=layout_pb2.MultilineChartContent(tag=[exact(f"{split}/{metric}")]))
        for split in ("train", "val")
    ]
    # Last in its category: the dashboard places margin charts after the multi-line ones whatever the order.
    series = layout_pb2.MarginChartContent.Series(value=f"val/{metric}", lower=f"train/{metric}", upper=f"val/{metric}")
    title = f"{metric}: val (line) vs train (edge of the band)"
    gap = layout_pb2.Chart(title=title, margin=layout_pb2.MarginChartContent(series=[series]))
    return layout_pb2.Category(title=f"{metric} per epoch", chart=[*splits, gap], closed=metric not in OPEN_METRICS)


def custom_scalars_summary(metrics: Sequence[str]) -> Summary:
    """The layout as the summary that SummaryWriter.add_custom_scalars would write (which cannot close a category)."""
    tensor = TensorProto(dtype=types_pb2.DT_STRING, string_val=[custom_scalars_layout(metrics).SerializeToString()])
    tensor.tensor_shape.CopyFrom(TensorShapeProto())
    value = Summary.Value(tag=custom_scalar_metadata.CONFIG_SUMMARY_TAG, tensor=tensor)
    value.metadata.CopyFrom(custom_scalar_metadata.create_summary_metadata())
    return Summary(value=[value])


def hparam_values(cfg, overrides: Iterable[str] = ()) -> dict:
    """The hyperparameters a run shows in HParams, typed as TensorBoard shows them (bool, number, text).

    The main keys always; an option only when it is on (not 0, false or null) or `overrides` (the run's
    command-line overrides, `key=value`) name it, so that a key swept through its off value stays in every job.
    The model, optimizer, scheduler and initializer are named by what they build."""
    tree = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    # search: a trial's study; by_task: the monitor's defaults, not a choice
    leaves = flatten({k: v for k, v in tree.items() if k not in ("logging", "hydra", "search", "by_task")})
    named = {o.split("=", 1)[0].lstrip("+~") for o in overrides if "=" in o}
    values = _group_names(leaves)
    for key, value in leaves.items():
        chosen = key in named or any(key.startswith(f"{n}.") for n in named if "." in n)
        if value is None or _NEVER.fullmatch(key) or (_SETTINGS.fullmatch(key) and not chosen):
            continue
        if _MAIN.fullmatch(key) or chosen or _is_on(value):
            values[key] = _typed(value)
    return values


def _group_names(leaves: dict) -> dict:
    names = {
        "model": leaves.get("model._target_"),
        "optimizer": leaves.get("optimizer._target_"),
        "scheduler": leaves.get("scheduler.fn._target_", "none" if "scheduler.fn" in leaves else None),
        "initializer": leaves.get("initializer.fn._target_", "default" if "initializer.fn" in leaves else None),
        "loss": leaves.get("loss._target_"),
    }
    return {k: str(v).rsplit(".", 1)[-1].rstrip("_") for k, v in names.items() if v is not None}


def _is_on(value) -> bool:
    return not (value is False or value == 0 or value in ("", []))


def _typed(value):
    if isinstance(value, (bool, int, float, str)):
        return value
    return json.dumps(value, separators=(",", ":"))  # as an override writes it: [16,32,64]


def session_summaries(cfg, overrides: Iterable[str] = ()) -> tuple[Summary, Summary]:
    """(session start, session end): the summaries that make a run one session in HParams, with its values.

    No experiment: one written per run would hide which values differ between the runs (see the module's note)."""
    start = plugin_data_pb2.SessionStartInfo(start_time_secs=time.time())
    for key, value in hparam_values(cfg, overrides).items():
        field = "bool_value" if isinstance(value, bool) else "number_value" if isinstance(value, (int, float)) else "string_value"
        setattr(start.hparams[key], field, value)
    end = plugin_data_pb2.SessionEndInfo(status=api_pb2.STATUS_SUCCESS)
    return (
        _summary(metadata.SESSION_START_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_start_info=start)),
        _summary(metadata.SESSION_END_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_end_info=end)),
    )


def _summary(tag: str, data: plugin_data_pb2.HParamsPluginData) -> Summary:
    return Summary(value=[Summary.Value(tag=tag, metadata=metadata.create_summary_metadata(data))])


def sweep_experiment(sessions: Sequence[dict], metric_tags: Sequence[str] = HPARAM_METRICS) -> Summary:
    """The experiment over `sessions` (each a job's hparams, as its session start info holds them): every
    hyperparameter with its type, domain and whether it differs between the jobs; the metrics in this order."""
    names = sorted({name for s in sessions for name in s})
    infos = [_hparam_info(name, [s[name] for s in sessions if name in s]) for name in names]
    metrics = [api_pb2.MetricInfo(name=api_pb2.MetricName(tag=tag)) for tag in metric_tags]
    experiment = api_pb2.Experiment(hparam_infos=infos, metric_infos=metrics, time_created_secs=time.time())
    return _summary(metadata.EXPERIMENT_TAG, plugin_data_pb2.HParamsPluginData(experiment=experiment))


def _hparam_info(name: str, values: list) -> api_pb2.HParamInfo:
    kinds = {type(v) for v in values}
    if kinds == {bool}:
        info = api_pb2.HParamInfo(name=name, type=api_pb2.DATA_TYPE_BOOL)
        info.domain_discrete.extend(sorted(set(values)))
    elif kinds <= {int, float}:
        info = api_pb2.HParamInfo(name=name, type=api_pb2.DATA_TYPE_FLOAT64)
        info.domain_interval.min_value, info.domain_interval.max_value = min(values), max(values)
    else:  # text, or values of mixed types, as TensorBoard itself types them
        values = [v if isinstance(v, str) else json.dumps(v) for v in values]
        info = api_pb2.HParamInfo(name=name, type=api_pb2.DATA_TYPE_STRING)
        info.domain_discrete.extend(sorted(set(values)))
    info.differs = len(set(values)) > 1
    return info


def read_session_hparams(run_dir: Path) -> dict | None:
    """The hparams of the session start info in `run_dir`'s own event files (not its subfolders), as Python values."""
    for path in sorted(Path(run_dir).glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                if value.tag == metadata.SESSION_START_INFO_TAG:
                    content = value.metadata.plugin_data.content
                    start = metadata.parse_session_start_info_plugin_data(content)
                    return {k: getattr(v, v.WhichOneof("kind")) for k, v in start.hparams.items() if v.WhichOneof("kind")}
    return None


def write_sweep_experiment(sweep_dir: Path, metric_tags: Sequence[str] = HPARAM_METRICS) -> Path | None:
    """Write the experiment over the jobs below `sweep_dir`, replacing an earlier one; None without jobs.

    It goes into the first job's directory, not the sweep's root: an event file there would make the root
    one more run in TensorBoard's run lists."""
    sweep_dir = Path(sweep_dir)
    for old in sweep_dir.rglob(f"events.out.tfevents.*{SWEEP_EXPERIMENT_SUFFIX}"):
        old.unlink()
    jobs = sorted({p.parent for p in sweep_dir.rglob("events.out.tfevents.*")})
    sessions = {job: found for job in jobs if (found := read_session_hparams(job)) is not None}
    if not sessions:
        return None
    home = next(iter(sessions))
    if metric_tags is HPARAM_METRICS and all(found.get("task") == "regression" for found in sessions.values()):
        metric_tags = REGRESSION_HPARAM_METRICS
    writer = EventFileWriter(str(home), filename_suffix=SWEEP_EXPERIMENT_SUFFIX)
    writer.add_event(Event(wall_time=time.time(), summary=sweep_experiment(list(sessions.values()), metric_tags)))
    writer.close()
    return max(home.glob(f"events.out.tfevents.*{SWEEP_EXPERIMENT_SUFFIX}"))
