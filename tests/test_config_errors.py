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
        (["trainer.grad_clip=1"], "trainer.grad_clip=1: must be a block of keys; set one of them, e.g. trainer.grad_clip.max"),
        (["trainer.grad_clip=0"], "trainer.grad_clip=0: must be a block of keys"),
        (["initializer.fn=xavier"], "initializer.fn=xavier: must be a block of keys or null"),
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
    "dataset": ["digits", "mnist", "moons", "diabetes"],
    "loss": ["cross_entropy", "focal", "multi_margin", "bce", "mse", "huber"],
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
    from dlrun.engine.build import check_loss, make_model, model_outputs
    from dlrun.engine.optim import EarlyStopping, Regime, Schedule, build_loss

    known = known_shape(cfg.dataset)
    if known is not None:
        shape, num_classes = known
    else:  # a dataset whose shape is known only once loaded (or no dataset: a clean error)
        data = load_data(cfg.dataset, cfg.seed, cfg.trainer.val_fraction)
        shape, num_classes = data.in_shape, data.num_classes
    check_loss(cfg, num_classes)  # the loss fits the task and the class count, as a run checks before building
    outputs = model_outputs(cfg, num_classes)  # one for a binary head (loss=bce) or a regression
    with torch.device("meta"):
        size = sum(p.numel() for p in make_model(cfg.model, shape, outputs, num_classes=num_classes).parameters())
    if size > 5_000_000:
        return  # valid, but too big to build for real in a unit test; the meta build ran its checks
    torch.manual_seed(0)
    model = make_model(cfg.model, shape, outputs, num_classes=num_classes)
    fn = instantiate(cfg.initializer.fn) if cfg.initializer.fn else None
    initialize(model, fn, cfg.initializer.zero_bias)
    optimizer = instantiate(cfg.optimizer)(params=[p for p in model.parameters() if p.requires_grad])
    labels = torch.arange(4) % num_classes
    schedule = Schedule(cfg.scheduler, optimizer, cfg.trainer.epochs, 3)
    regime = Regime(cfg.trainer, model, schedule, cfg.logging.grad_norm)
    EarlyStopping(cfg.trainer.early_stopping)
    loss = build_loss(cfg.loss, labels, num_classes, cfg.task)(model(torch.randn(4, *shape)), labels)
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


# ---- a user's own config folder (--config-dir): YAML that does not parse, a `_target_` that does not import ----


def folder_error(folder, *overrides: str) -> tuple[str, int] | None:
    """What `dlrun train --config-dir FOLDER OVERRIDES` would print and exit with, composed in-process: Hydra
    reads FOLDER through the same file source whether it comes from --config-dir or hydra.searchpath."""
    return error_for(f"hydra.searchpath=['file://{folder}']", *overrides)


MLP = "_target_: dlrun.model.MLP\n"


@pytest.mark.parametrize(
    "path, text, where, what",
    [
        ("model/mynet.yaml", MLP + "hidden_sizes: [10]\n  dropout: 0.1\n", "line 3, column 3", "the indentation does not match"),
        (
            "model/mynet.yaml",
            MLP + "hidden_sizes: [10]\ndropout: a: 0.1\n",
            "line 3, column 11",
            "mapping values are not allowed here",
        ),
        ("model/mynet.yaml", MLP + "hidden_sizes:\n\t- 10\n", "line 3, column 1", "a tab: YAML indents with spaces only"),
        (
            "model/mynet.yaml",
            MLP + "hidden_sizes: [10, 20\ndropout: 0.1\n",
            "line 2, column 15",
            "this '[' is not closed: write a list as [1, 2]",
        ),
        ("model/mynet.yaml", MLP + "batch_norm: {a: 1\n", "line 2, column 13", "this '{' is not closed"),
        (
            "model/mynet.yaml",
            MLP + "hidden_sizes: [10]\nhidden_sizes: [20]\n",
            "line 3, column 1",
            "hidden_sizes is set twice in one mapping (first on line 2)",
        ),
        ("model/mynet.yaml", MLP + 'activation: "relu\n', "line 2, column 13", "this quote is not closed"),
        ("model/mynet.yaml", MLP + "hidden_sizes\n", "line 2, column 1", "this line has no ':': write 'key: value'"),
        (
            "model/mynet.yaml",
            MLP + "activation: @relu\n",
            "line 2, column 13",
            "'@' cannot start a value: quote the value (activation: '@relu')",
        ),
        (
            "model/mynet.yaml",
            MLP + "hidden_sizes: ${oops\n",
            "line 2",
            "hidden_sizes: no viable alternative at input '${oops'; write an interpolation as ${other.key}",
        ),
        ("experiment/mine.yaml", "# @package _global_\ntrainer:\n\tepochs: 2\n", "line 3, column 1", "a tab"),
    ],
)
def test_a_malformed_yaml_file_names_its_file_and_line(tmp_path, path, text, where, what):
    (tmp_path / path).parent.mkdir(parents=True)
    (tmp_path / path).write_text(text)
    message, code = folder_error(tmp_path, f"{path.split('/')[0]}={path.split('/')[1][:-5]}")
    assert code == 2
    assert "\n" not in message
    assert message.startswith(f"{tmp_path / path}, {where}: {what}"), message


@pytest.fixture
def user_modules(tmp_path, monkeypatch):
    """Modules of the user's own, importable as a run would import them: one fine, two broken on import."""
    (tmp_path / "cfg_user_fine.py").write_text("class Net:\n    pass\n")
    (tmp_path / "cfg_user_syntax.py").write_text("import math\ndef net(:\n    pass\n")
    (tmp_path / "cfg_user_needs.py").write_text("import cfg_user_not_installed\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


@pytest.mark.parametrize(
    "target, why",
    [
        ("cfg_user_nowhere.Net", "no such model class: no module named 'cfg_user_nowhere'; install it, or add the folder"),
        ("cfg_user_fine.Nett", "no such model class: cfg_user_fine has no Nett; did you mean 'cfg_user_fine.Net'?"),
        ("cfg_user_syntax.Net", "cannot be imported: importing cfg_user_syntax raised SyntaxError: invalid syntax ("),
        (
            "cfg_user_needs.Net",
            "cannot be imported: importing cfg_user_needs raised ModuleNotFoundError: No module named 'cfg_user_not_installed' (",
        ),
    ],
)
def test_a_target_that_does_not_import_names_key_value_why_and_file(user_modules, target, why):
    folder = user_modules / "configs"
    (folder / "model").mkdir(parents=True)
    (folder / "model" / "mynet.yaml").write_text(f"# my own network\n_target_: {target}\nhidden: 3\n")
    message, code = folder_error(folder, "model=mynet")
    assert code == 2
    assert message.startswith(f"model._target_={target}: {why}"), message
    assert message.endswith(f"; set in {folder / 'model' / 'mynet.yaml'}, line 2"), message
    if "raised" in why:  # the user's own file and line at fault
        module = target.split(".")[0]
        assert f"{user_modules / module}.py, line {2 if 'syntax' in module else 1})" in message


def test_a_target_from_an_interpolation_names_the_config_dir(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "mynet.yaml").write_text("_target_: ${oc.env:DLRUN_TEST_UNSET_VARIABLE,cfg_user_nowhere.Net}\n")
    message, code = folder_error(tmp_path, "model=mynet")
    assert code == 2
    assert message.startswith("model._target_=cfg_user_nowhere.Net: no such model class"), message
    assert message.endswith(f"; set in your --config-dir {tmp_path}"), message
    # typed on the command line, the target needs no file
    message, _ = folder_error(tmp_path, "model=mynet", "model._target_=cfg_user_nowhere.Net")
    assert "set in" not in message


# ---- the override grammar: what is wrong, and how to write it ----


@pytest.mark.parametrize(
    "overrides, what, fix",
    [
        (["model.hidden_sizes=[1,2"], "the '[' is not closed", "write a list as model.hidden_sizes=[1,2]"),
        (["model.hidden_sizes=[1,,2]"], "an empty item between commas", "write model.hidden_sizes=[1,2]"),
        (["model.hidden_sizes=[1,2]]"], "a ']' without its '['", "write model.hidden_sizes=[1,2]"),
        (["model.hidden_sizes={a:1"], "the '{' is not closed", "write a dict as model.hidden_sizes={a:1}"),
        (["a=b=c"], "quote values with = in them", "\"a='b=c'\" (the outer quotes are for the shell)"),
        (["key==1"], "one '=' goes between key and value", "write key=1"),
        (["=1"], "no key before '='", "write KEY=VALUE"),
        (["model.dropout=0.1)"], "a ')' without its '('", "write model.dropout=0.1"),
        (["optimizer.lr=1e-3,"], "a trailing comma", "write optimizer.lr=1e-3"),
        (["model.activation='relu"], "the ' quote is not closed", "write \"model.activation='relu'\""),
        (['model.activation="relu'], 'the " quote is not closed', "write 'model.activation=\"relu\"'"),
        (["trainer.epochs=${"], "the interpolation '${' is not closed", "write 'trainer.epochs=${other.key}'"),
        (["optimizer.lr=1e-3;"], "';' cannot stand in an unquoted value", "quote the value, \"optimizer.lr='1e-3;'\""),
        (["model.activation=choice(relu"], "the '(' is not closed", "write a call as model.activation=choice(relu)"),
        (["+model.x"], "no value", "write +model.x=VALUE"),
        (["model.dropout=0.1", "0.2"], "not KEY=VALUE", "quote the two as one: 'model.dropout=0.1 0.2'"),
        (["~"], "names no key", "write ~KEY to delete a key or a group"),
        (["+++model.x=1"], "write +KEY=VALUE to add a key", "++KEY=VALUE to add or override it"),
        (["model..dropout=0.1"], "'model..dropout' is not a key", "write names joined by single dots"),
        (["modle@x=cnn"], "no config group modle", "did you mean 'model'?"),
        (["model@foo=cnn"], "the defaults list has no model@foo", "write model=cnn to choose the model, or +model@foo=cnn"),
        (["~model=cnn"], "the defaults list has no model=cnn to delete", "~model deletes the model"),
        (["hydra/launcher=nope"], "no such option", "(options: basic"),
        (["hydra/launchr=basic"], "no such config group", "did you mean 'hydra/launcher'"),
        (["trainer.epochs=glob(*)"], "a sweep runs one job per value", "add -m (dlrun train -m trainer.epochs=glob(*))"),
    ],
)
def test_a_malformed_override_says_what_is_wrong_and_how_to_write_it(overrides, what, fix):
    message, code = error_for(*overrides)
    assert code == 2
    assert "\n" not in message and "Error parsing" not in message, message
    culprit = overrides[-1] if overrides[-1] != "hydra/launchr=basic" else "hydra/launchr"
    assert message.startswith(f"{culprit}: {what}"), message
    assert fix in message, message


# ---- the same through the installed command: one line, the exit code, nothing started ----


@pytest.mark.slow
def test_cli_malformed_primary_config_in_config_dir(workdir):
    (workdir / "cfg").mkdir()
    (workdir / "cfg" / "mine.yaml").write_text("defaults:\n  - train\n  - _self_\ntrainer:\n  epochs: 2\n   batch_size: 3\n")
    proc = run_dlrun("train", "--config-dir", "cfg", "--config-name", "mine", cwd=workdir, check=False)
    assert_one_line(proc, "cfg/mine.yaml, line 6, column 14: mapping values are not allowed here")
    assert not (workdir / "outputs").exists()


@pytest.mark.slow
def test_cli_target_that_does_not_import_names_its_file(workdir):
    (workdir / "cfg" / "model").mkdir(parents=True)
    (workdir / "cfg" / "model" / "mynet.yaml").write_text("_target_: cfg_user_broken.Net\n")
    (workdir / "cfg_user_broken.py").write_text("class Net(:\n    pass\n")
    proc = run_dlrun("train", "--config-dir", "cfg", "model=mynet", cwd=workdir, env={"PYTHONPATH": str(workdir)}, check=False)
    line = assert_one_line(
        proc, "model._target_=cfg_user_broken.Net: cannot be imported: importing cfg_user_broken raised SyntaxError"
    )
    assert line.endswith("(cfg_user_broken.py, line 1); set in cfg/model/mynet.yaml, line 1"), line
    assert not list((workdir / "outputs" / "runs").glob("*")), "a run that never started leaves no directory"


@pytest.mark.slow
def test_cli_malformed_override(workdir):
    proc = run_dlrun("train", "model.hidden_sizes=[50,50", cwd=workdir, check=False)
    assert_one_line(proc, "model.hidden_sizes=[50,50: the '[' is not closed: write a list as model.hidden_sizes=[50,50]")
