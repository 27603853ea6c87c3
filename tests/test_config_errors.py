"""Bad input gets one line naming the key, the value and what is allowed (with the closest valid name
for a typo), exit code 2 and no traceback; and it is caught before any work starts."""

import os
import subprocess

import pytest
import torch
from helpers import DLRUN, run_dlrun
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from dlrun.app.explain import describe
from dlrun.config.schema import SCHEMA
from dlrun.core.errors import DlrunError
from dlrun.data import known_shape, load_data
from dlrun.engine.build import check as check_config
from dlrun.model.initializers import initialize


@pytest.fixture(scope="module", autouse=True)
def hydra_configs():
    with initialize_config_module("dlrun.configs", version_base="1.3"):
        yield


def error_for(*overrides: str) -> tuple[str, int] | None:
    """What `dlrun train OVERRIDES` would print and exit with, or None when the config is accepted."""
    try:
        check_config(compose("train", overrides=list(overrides)))
    except Exception as err:
        return describe(err, list(overrides))
    return None


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["optimizer.lr=0"], "optimizer.lr=0: must be a number > 0"),
        (["optimizer=adam", "optimizer.lr=-0.001"], "optimizer.lr=-0.001: must be a number > 0"),
        (["optimizer.momentum=1"], "optimizer.momentum=1: must be a number in [0, 1)"),
        (["optimizer.momentum=-0.1"], "optimizer.momentum=-0.1: must be a number in [0, 1)"),
        (["model.dropout=1.0"], "model.dropout=1.0: must be a number in [0, 1)"),
        (["model=cnn", "model.dropout=-0.2"], "model.dropout=-0.2: must be a number in [0, 1)"),
        (["trainer.epochs=0"], "trainer.epochs=0: must be an integer >= 1"),
        (["trainer.epochs=2.5"], "trainer.epochs=2.5: must be an integer >= 1"),
        (["trainer.batch_size=0"], "trainer.batch_size=0: must be an integer >= 1"),
        (["trainer.batch_size=true"], "trainer.batch_size=true: must be an integer >= 1"),
        (["trainer.val_fraction=0"], "trainer.val_fraction=0: must be a number in (0, 1)"),
        (["trainer.val_fraction=1"], "trainer.val_fraction=1: must be a number in (0, 1)"),
        (["model.activation=rleu"], "model.activation=rleu: must be one of sigmoid, tanh, relu"),
        (["model.hidden_sizes=[100,0]"], "model.hidden_sizes=[100,0]: must be a list of integers >= 1"),
        (["model.hidden_sizes=[50,-5]"], "model.hidden_sizes=[50,-5]: must be a list of integers >= 1"),
        (["optimizer.nesterov=true"], "optimizer.nesterov=true: needs optimizer.momentum > 0"),
        (
            ["model=resnet18", "model.freeze_backbone=true"],
            "model.freeze_backbone=true: needs pretrained weights, or only a head on a random backbone learns: "
            "model.weights=default",
        ),
        (["trainer.epochs=${nowhere}"], "trainer.epochs=${nowhere}: cannot be resolved"),
        (
            ["model.hidden_sizes=50,50"],
            "model.hidden_sizes=50,50: a comma makes a sweep; write a list as "
            "model.hidden_sizes=[50,50], a text with commas as model.hidden_sizes='50,50', or add -m",
        ),
    ],
)
def test_a_bad_value_names_key_value_and_what_is_allowed(overrides, expected):
    message, code = error_for(*overrides)
    assert code == 2
    assert message.startswith(expected), message


@pytest.mark.parametrize(
    "overrides, start, suggestion",
    [
        (["model.activation=rleu"], "model.activation=rleu", "did you mean 'relu'"),
        (["optimizer=adamm"], "optimizer=adamm: no such option", "did you mean 'adam'"),
        (
            ["optimizer._target_=torch.optim.Adamm"],
            "optimizer._target_=torch.optim.Adamm: no such optimizer",
            "did you mean 'torch.optim.Adam'",
        ),
        (["initializer=xavier_unifrom"], "initializer=xavier_unifrom: no such option", "did you mean 'xavier_uniform'"),
        (
            ["initializer=xavier_uniform", "initializer.fn._target_=torch.nn.init.xavier_unifrom_"],
            "initializer.fn._target_=torch.nn.init.xavier_unifrom_: no such initialisation function",
            "did you mean 'torch.nn.init.xavier_uniform_'",
        ),
        (
            ["initializer=kaiming_uniform", "initializer.fn.nonlinearity=tahn"],
            "initializer.fn.nonlinearity=tahn: must be one of",
            "did you mean 'tanh'",
        ),
        (["trainer.epcohs=3"], "trainer.epcohs: no such key", "did you mean 'trainer.epochs'"),
        (
            ["+model.hiden_sizes=[10]"],
            "model.hiden_sizes=[10]: is not an argument of dlrun.model.MLP",
            "did you mean 'hidden_sizes'",
        ),
    ],
)
def test_a_typo_gets_the_closest_valid_name(overrides, start, suggestion):
    message, code = error_for(*overrides)
    assert code == 2
    assert message.startswith(start), message
    assert suggestion in message, message


def test_a_cnn_whose_feature_map_shrinks_to_nothing():
    # 8x8 digits: a 5x5 kernel without padding leaves 4x4, the pool 2x2, and the next 5x5 kernel has no room.
    message, code = error_for("model=cnn", "model.channels=[8,8,8]", "model.kernel_size=5", "model.padding=0")
    assert code == 2
    assert message.startswith("model.channels=[8, 8, 8]: the feature map of a 8x8 input shrinks to nothing in block 2")
    # The same network fits MNIST's 28x28 images for two blocks: the image size is what decides.
    assert error_for("model=cnn", "model.channels=[8,8]", "model.kernel_size=5", "model.padding=0", "dataset=mnist") is None


def test_an_image_size_a_torchvision_model_cannot_take():
    message, code = error_for("model=torchvision", "model.name=alexnet")
    assert code == 2
    assert message.startswith("model.resize="), message
    assert "alexnet cannot take 8x8 images" in message
    assert error_for("model=torchvision", "model.name=alexnet", "model.resize=64") is None


def test_a_dataset_root_that_is_a_file(tmp_path):
    afile = tmp_path / "data.txt"
    afile.write_text("not a folder")
    message, code = error_for("dataset=mnist", f"dataset.root={afile}")
    assert (message, code) == (f"dataset.root={afile}: must be a folder, but it is a file", 2)


@pytest.mark.parametrize("option", ["cnn", "mlp", "logistic", "lenet5", "torchvision"])
def test_shipped_models_pass_on_their_datasets(option):
    assert error_for(f"model={option}") is None
    assert error_for(f"model={option}", "dataset=mnist") is None


# ---- property: random overrides give a clean error or a config that builds and trains a step ----


def _known_keys() -> list[str]:
    keys = set(SCHEMA)

    def walk(node, prefix):
        for k, v in node.items():
            keys.add(prefix + k)
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")

    for model in ("mlp", "cnn"):
        walk(OmegaConf.to_container(compose("train", overrides=[f"model={model}"])), "")
    return sorted(keys)


with initialize_config_module("dlrun.configs", version_base="1.3"):
    KEYS = _known_keys()
GROUP_CHOICES = {
    "model": ["mlp", "cnn", "logistic", "lenet5", "torchvision", "mlp_50_50"],
    "optimizer": ["sgd", "adam", "adamw", "rmsprop", "adagrad", "adadelta"],
    "initializer": ["default", "xavier_uniform", "kaiming_uniform", "kaiming_normal", "orthogonal", "constant"],
    "scheduler": ["none", "step", "cosine", "onecycle", "plateau"],
    "dataset": ["digits", "mnist"],
    "device": ["cpu"],
}
word = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=8)
scalar = st.one_of(
    st.integers(-3, 300).map(str),
    st.sampled_from(["0", "1", "-1", "1e400", "nan", "inf", "-inf", "0.5", "0.99", "1.0", str(2**40), str(2**70)]),
    st.floats(allow_nan=False, width=32).map(repr),
    st.sampled_from(["true", "false", "null", "relu", "max", "none", "val/loss", "train/f1", "balanced", "''"]),
    word,
)
value = st.one_of(
    scalar,
    st.lists(st.one_of(st.integers(-2, 64).map(str), st.sampled_from(["0.5", "relu", "true"])), max_size=4).map(
        lambda items: "[" + ",".join(items) + "]"
    ),
    st.sampled_from(["${nowhere}", "${trainer.epochs}", "[", "{a:1}", "'quoted'", "a=b", "x,y"]),
)
override = st.one_of(
    st.builds(lambda k, v: f"{k}={v}", st.sampled_from(KEYS), value),
    st.builds(lambda k, v: f"+{k}={v}", st.one_of(st.sampled_from(KEYS), word), value),
    st.builds(lambda k: f"~{k}", st.sampled_from(KEYS)),
    st.builds(
        lambda g, o: f"{g}={o}",
        st.sampled_from(list(GROUP_CHOICES)),
        st.one_of(st.sampled_from(sum(GROUP_CHOICES.values(), [])), word),
    ),
    st.builds(lambda k, v: f"{k}={v}", word, value),
)


def train_one_step(cfg) -> None:
    """What a run builds from the config, on CPU with a random batch of the dataset's shape."""
    from dlrun.engine.optim import EarlyStopping, Regime, Schedule, build_loss

    known = known_shape(cfg.dataset)
    if known is not None:
        shape, num_classes = known
    else:  # a dataset whose shape is known only once loaded (or no dataset: a clean error)
        data = load_data(cfg.dataset, cfg.seed, cfg.trainer.val_fraction)
        shape, num_classes = data.in_shape, data.num_classes
    with torch.device("meta"):
        size = sum(p.numel() for p in instantiate(cfg.model, in_shape=shape, num_classes=num_classes).parameters())
    if size > 5_000_000:
        return  # valid, but too big to build for real in a unit test; the meta build ran its checks
    torch.manual_seed(0)
    model = instantiate(cfg.model, in_shape=shape, num_classes=num_classes)
    fn = instantiate(cfg.initializer.fn) if cfg.initializer.fn else None
    initialize(model, fn, cfg.initializer.zero_bias)
    optimizer = instantiate(cfg.optimizer)(params=[p for p in model.parameters() if p.requires_grad])
    labels = torch.arange(4) % num_classes
    schedule = Schedule(cfg.scheduler, optimizer, cfg.trainer.epochs, 3)
    regime = Regime(cfg.trainer, model, schedule, cfg.logging.grad_norm)
    EarlyStopping(cfg.trainer.early_stopping)
    loss = build_loss(cfg.trainer, labels, num_classes)(model(torch.randn(4, *shape)), labels)
    (loss + regime.penalty()).backward()
    regime.clip_gradients()
    optimizer.step()
    regime.after_step()


@settings(
    max_examples=int(os.environ.get("DLRUN_HYPOTHESIS_EXAMPLES", 40)),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=os.environ.get("DLRUN_HYPOTHESIS_EXAMPLES") is None,
)
@given(overrides=st.lists(override, min_size=1, max_size=4))
def test_random_overrides_give_a_clean_error_or_a_valid_config(overrides):
    try:
        cfg = compose("train", overrides=overrides)
        check_config(cfg)
        train_one_step(cfg)
    except Exception as err:
        message, code = describe(err, overrides)
        assert code == 2, f"{overrides} -> {type(err).__name__}: {message}"
        assert message and "\n" not in message and "Traceback" not in message, message
        if isinstance(err, DlrunError):
            key = message.split(": ")[0]
            assert key and " " not in key, f"{overrides}: the message must start with the key: {message}"


# ---- through the command line: exit code, one line, traceback only on request ----


def assert_one_line(proc, start: str, code: int = 2) -> str:
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"dlrun: error: {start}"), lines[0]
    return lines[0]


@pytest.mark.slow
def test_cli_bad_value_stops_before_any_work(workdir):
    proc = run_dlrun("train", "optimizer.lr=-1", "trainer.epochs=1", cwd=workdir, check=False)
    assert_one_line(proc, "optimizer.lr=-1: must be a number > 0")
    assert not list((workdir / "outputs" / "runs").iterdir()), "a run that never started leaves no directory"
    assert "epoch" not in proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize("debug", ["--verbose", "HYDRA_FULL_ERROR=1"])
def test_cli_traceback_only_when_asked(workdir, debug):
    args, env = (["--verbose"], {}) if debug == "--verbose" else ([], {"HYDRA_FULL_ERROR": "1"})
    # run_dlrun drops HYDRA_FULL_ERROR from the environment, so call the entry point directly.
    proc = subprocess.run(
        [DLRUN, "train", "trainer.epochs=0", *args],
        cwd=workdir,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=300,
    )
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr
    assert "trainer.epochs=0: must be an integer >= 1" in proc.stderr


@pytest.mark.slow
def test_cli_output_dir_that_cannot_be_written(workdir):
    (workdir / "afile").write_text("a file, not a folder")
    proc = run_dlrun("train", "hydra.run.dir=afile/run", cwd=workdir, check=False)
    assert_one_line(proc, "hydra.run.dir=afile/run: must be a writable folder")
    assert (workdir / "afile").read_text() == "a file, not a folder"


def test_hypothesis_keys_cover_the_issue_groups():
    for key in (
        "optimizer.lr",
        "optimizer.momentum",
        "model.dropout",
        "trainer.epochs",
        "trainer.batch_size",
        "trainer.val_fraction",
        "model.activation",
        "model.hidden_sizes",
        "model.channels",
        "dataset.root",
    ):
        assert key in KEYS
