"""Optimisers, lr schedules, gradient clipping, the L1 penalty, the loss options and early stopping,
each built from its composed config as a run builds it."""

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import compose_config
from torch import nn

from dlrun.config.schema import METRIC_NAMES as METRICS
from dlrun.core.errors import ConfigError, DlrunError
from dlrun.engine.optim import EarlyStopping, Regime, Schedule, build_loss, build_optimizer

EPOCHS, STEPS = 8, 4  # steps per epoch
LR = compose_config().optimizer.lr  # optimizer=sgd's default


def lr_per_step(option: str, *overrides: str, metric=lambda epoch: 0.5) -> list[float]:
    """The lr each optimizer step used, stepping the schedule as the training loop does."""
    cfg = compose_config(f"scheduler={option}", *overrides)
    param = nn.Parameter(torch.zeros(1))
    optimizer = build_optimizer(cfg.optimizer, [param])
    schedule = Schedule(cfg.scheduler, optimizer, EPOCHS, STEPS)
    lrs = []
    for epoch in range(1, EPOCHS + 1):
        for _ in range(STEPS):
            lrs.append(optimizer.param_groups[0]["lr"])
            param.grad = torch.ones(1)
            optimizer.step()
            schedule.after_step()
        schedule.after_epoch({"epoch": epoch, **{f"val/{m}": metric(epoch) for m in METRICS}})
    return lrs


def per_epoch(values: list[float]) -> list[float]:
    return [lr for lr in values for _ in range(STEPS)]


def test_none_keeps_the_lr():
    assert lr_per_step("none") == [LR] * EPOCHS * STEPS


def test_step_multiplies_by_gamma_every_step_size_epochs():
    assert lr_per_step("step") == pytest.approx(per_epoch([LR * 0.7**e for e in range(EPOCHS)]))
    got = lr_per_step("step", "scheduler.fn.step_size=3", "scheduler.fn.gamma=0.5")
    assert got == pytest.approx(per_epoch([LR * 0.5 ** (e // 3) for e in range(EPOCHS)]))
    # interval=step counts optimizer steps instead of epochs.
    got = lr_per_step("step", "scheduler.interval=step", "scheduler.fn.step_size=2")
    assert got == pytest.approx([LR * 0.7 ** (t // 2) for t in range(EPOCHS * STEPS)])


def test_multistep_decays_at_each_milestone():
    got = lr_per_step("multistep", "scheduler.fn.milestones=[2,5]")
    assert got == pytest.approx(per_epoch([LR * 0.1 ** sum(e >= m for m in (2, 5)) for e in range(EPOCHS)]))


def test_exponential_decays_every_epoch():
    assert lr_per_step("exponential") == pytest.approx(per_epoch([LR * 0.95**e for e in range(EPOCHS)]))


def test_cosine_warms_up_linearly_then_follows_the_cosine_every_step():
    total, warmup = EPOCHS * STEPS, STEPS  # warmup_epochs 1
    expected = [
        LR * (t + 1) / warmup if t < warmup else LR * (1 + math.cos(math.pi * (t - warmup) / (total - warmup))) / 2
        for t in range(total)
    ]
    got = lr_per_step("cosine")
    assert got == pytest.approx(expected)
    assert got[warmup - 1] == got[warmup] == pytest.approx(LR) and got[-1] < 0.01 * LR
    floor = lr_per_step("cosine", "scheduler.fn.min_lr=0.01", "scheduler.fn.warmup_epochs=0")
    assert floor[0] == pytest.approx(LR) and floor[-1] == pytest.approx(0.01, rel=0.05) and min(floor) >= 0.01


def test_onecycle_rises_to_max_lr_then_anneals_every_step():
    total = EPOCHS * STEPS
    up = 0.3 * total - 1  # pct_start 0.3
    low, final = LR / 25, LR / 25 / 1e4

    def cos(start, end, pct):
        return end + (start - end) / 2 * (1 + math.cos(math.pi * pct))

    expected = [cos(low, LR, t / up) if t <= up else cos(LR, final, (t - up) / (total - 1 - up)) for t in range(total)]
    got = lr_per_step("onecycle")
    assert got == pytest.approx(expected)
    assert got[0] == pytest.approx(LR / 25) and max(got) == pytest.approx(LR, rel=0.01) and got[-1] == pytest.approx(final)


def test_plateau_cuts_the_lr_when_the_monitored_metric_stalls():
    # mode max, patience 2, factor 0.1: after 3 epochs without improvement the next epoch runs at a tenth.
    assert lr_per_step("plateau") == pytest.approx(per_epoch([LR] * 4 + [LR / 10] * 3 + [LR / 100]))
    assert lr_per_step("plateau", metric=lambda epoch: 0.1 * epoch) == [LR] * EPOCHS * STEPS
    # It watches trainer.monitor in trainer.mode: a falling val/loss is an improvement.
    falling = lr_per_step("plateau", "trainer.monitor=val/loss", "trainer.mode=min", metric=lambda epoch: 1 / epoch)
    assert falling == [LR] * EPOCHS * STEPS
    with pytest.raises(ConfigError, match="scheduler.interval=step: must be epoch for plateau"):
        lr_per_step("plateau", "scheduler.interval=step")


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        ("sgd", {"momentum": 0.9, "dampening": 0.0, "nesterov": True, "weight_decay": 1e-4}),
        ("adam", {"betas": (0.8, 0.99), "weight_decay": 1e-4}),
        ("adamw", {"weight_decay": 0.05}),
        ("adadelta", {"rho": 0.95}),
        ("rmsprop", {"alpha": 0.9, "momentum": 0.5, "centered": True}),
        ("adagrad", {"lr_decay": 0.01}),
    ],
)
def test_optimizer_options_reach_torch(option, expected):
    overrides = [f"optimizer.{k}={list(v) if isinstance(v, tuple) else v}" for k, v in expected.items()]
    cfg = compose_config(f"optimizer={option}", *overrides)
    assert cfg.optimizer._partial_ is True
    optimizer = build_optimizer(cfg.optimizer, [nn.Parameter(torch.zeros(2))])
    group = optimizer.param_groups[0]
    assert {k: tuple(group[k]) if isinstance(v, tuple) else group[k] for k, v in expected.items()} == expected
    assert group["lr"] == cfg.optimizer.lr


def test_torchs_own_optimizer_checks_become_one_line():
    cfg = compose_config("optimizer=sgd", "optimizer.nesterov=true")
    with pytest.raises(DlrunError, match="optimizer=torch.optim.SGD: Nesterov momentum requires a momentum"):
        build_optimizer(cfg.optimizer, [nn.Parameter(torch.zeros(2))])


def regime_for(model: nn.Module, *overrides: str, grad_norm: bool = True) -> Regime:
    cfg = compose_config("scheduler=none", *overrides)  # a constant lr: no optimizer needed
    return Regime(cfg.trainer, model, Schedule(cfg.scheduler, None, 1, 1), grad_norm)


def model_with_gradients(scale: float = 100.0) -> nn.Linear:
    torch.manual_seed(0)
    model = nn.Linear(10, 3)
    (scale * model(torch.randn(16, 10)).pow(2).mean()).backward()
    return model


def total_norm(model: nn.Module) -> float:
    return torch.cat([p.grad.flatten() for p in model.parameters()]).norm().item()


def test_clipping_by_norm_scales_the_gradient_and_reports_the_norm_before():
    model = model_with_gradients()
    before = total_norm(model)
    assert before > 1
    reported = regime_for(model, "trainer.grad_clip.max_norm=1.0").clip_gradients()
    assert reported.item() == pytest.approx(before)
    assert total_norm(model) == pytest.approx(1.0, rel=1e-4)


def test_clipping_by_value_clamps_each_element():
    model = model_with_gradients()
    before = total_norm(model)
    reported = regime_for(model, "trainer.grad_clip.max_value=0.01").clip_gradients()
    assert reported.item() == pytest.approx(before)
    grads = torch.cat([p.grad.flatten() for p in model.parameters()])
    assert grads.abs().max().item() == pytest.approx(0.01)
    assert regime_for(model_with_gradients(), grad_norm=False).clip_gradients() is None


def test_l1_penalty_pulls_weights_towards_zero_by_lr_times_strength():
    torch.manual_seed(0)
    model = nn.Linear(10, 3)
    regime = regime_for(model, "trainer.l1=0.01")
    penalty = regime.penalty()
    assert penalty.item() == pytest.approx(0.01 * model.weight.abs().sum().item(), rel=1e-5), "weights only, not biases"
    weight, bias = model.weight.detach().clone(), model.bias.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    penalty.backward()
    optimizer.step()
    assert torch.allclose(model.weight, weight - 0.5 * 0.01 * weight.sign())
    assert torch.equal(model.bias.detach(), bias), "the penalty leaves biases alone"
    assert regime_for(nn.Linear(2, 2)).penalty() == 0.0


def test_label_smoothing_and_class_weights_shape_the_loss():
    logits, target = torch.randn(6, 3), torch.tensor([0, 0, 0, 0, 1, 2])
    cfg = compose_config("loss.label_smoothing=0.2")
    assert build_loss(cfg.loss, target, 3)(logits, target) == pytest.approx(
        F.cross_entropy(logits, target, label_smoothing=0.2).item()
    )
    balanced = build_loss(compose_config("loss.class_weights=balanced").loss, target, 3)
    assert balanced.weight.tolist() == pytest.approx([6 / (3 * 4), 6 / 3, 6 / 3])
    given = build_loss(compose_config("loss.class_weights=[1,2,3]").loss, target, 3)
    assert given(logits, target).item() == pytest.approx(
        F.cross_entropy(logits, target, weight=torch.tensor([1.0, 2.0, 3.0])).item()
    )
    # The config check knows the shipped datasets' class counts; the loss checks against the data itself.
    with pytest.raises(ConfigError, match=r"loss.class_weights=\[1, 2\]: must have 3 weights, one per class"):
        build_loss(compose_config("loss.class_weights=[1,2]").loss, target, 3)


def stopper(*overrides: str) -> EarlyStopping:
    return EarlyStopping(compose_config(*overrides).trainer.early_stopping)


def stop_epoch(early: EarlyStopping, values: list[float], key: str = "val/f1") -> int | None:
    for epoch, value in enumerate(values, start=1):
        if early.update({"epoch": epoch, key: value}):
            return epoch
    return None


def test_early_stopping_stops_when_the_metric_stalls():
    early = stopper("trainer.early_stopping.patience=2")
    assert stop_epoch(early, [0.5, 0.6, 0.6, 0.59, 0.9]) == 4
    assert early.summary() == {
        "monitor": "val/f1",
        "mode": "max",
        "patience": 2,
        "min_delta": 0.0,
        "stopped": True,
        "stopped_epoch": 4,
        "best_epoch": 2,
        "best": 0.6,
    }
    assert stop_epoch(stopper("trainer.early_stopping.patience=2"), [0.1 * e for e in range(1, 9)]) is None
    # Improvements of at most min_delta do not count.
    assert (
        stop_epoch(stopper("trainer.early_stopping.patience=2", "trainer.early_stopping.min_delta=0.05"), [0.5, 0.52, 0.54, 0.56])
        == 3
    )


def test_early_stopping_minimises_a_loss_and_never_stops_without_patience():
    early = stopper(
        "trainer.early_stopping.patience=1", "trainer.early_stopping.monitor=train/loss", "trainer.early_stopping.mode=min"
    )
    assert stop_epoch(early, [1.0, 0.8, 0.7, 0.75], key="train/loss") == 4
    never = stopper()
    assert not never.enabled and stop_epoch(never, [0.5] * 20) is None
