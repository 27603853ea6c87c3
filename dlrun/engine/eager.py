"""torch.optim without importing torch._dynamo until something compiles.

In torch 2.x an optimizer's first add_param_group, zero_grad, state_dict or step imports torch._dynamo, and
with it sympy: about 1.5 s of a 2-core CPU, more than a default run's 20 epochs. Those wrappers exist for
torch.compile: they mark graph breaks and regions dynamo must not trace. Until torch._dynamo is imported,
nothing can be tracing and the marks do nothing, so `use_plain_optimizers` swaps each such method for one
that calls the plain function while torch._dynamo is not loaded, and torch's own wrapper once it is
(`trainer.compile=true`, or anything else that imports it). What a step computes is the same either way."""

import functools
import sys

import torch
import torch.optim.optimizer as torch_optimizer

_DISABLE_DYNAMO = torch._disable_dynamo(lambda: None).__code__  # torch's lazy `_disable_dynamo` wrapper
_USE_GRAD = torch_optimizer._use_grad_for_differentiable(lambda self: None).__code__  # every step's wrapper


def dynamo_loaded() -> bool:
    return "torch._dynamo" in sys.modules


def _plain_until_dynamo(wrapped, plain):
    @functools.wraps(plain)
    def method(*args, **kwargs):
        return wrapped(*args, **kwargs) if dynamo_loaded() else plain(*args, **kwargs)

    method.dlrun_wrapped = wrapped
    return method


def _plain_step(step):
    """The step `_use_grad_for_differentiable` wraps, with grad mode as that wrapper sets it, minus its graph breaks."""

    @functools.wraps(step)
    def plain(self, *args, **kwargs):
        with torch.set_grad_enabled(self.defaults["differentiable"]):
            return step(self, *args, **kwargs)

    return plain


def _optimizer_classes() -> list[type]:
    seen, todo = [], [torch.optim.Optimizer]
    while todo:
        cls = todo.pop()
        seen.append(cls)
        todo.extend(c for c in cls.__subclasses__() if c not in seen)
    return seen


def use_plain_optimizers() -> None:
    """Swap torch's dynamo wrappers on every optimizer class defined so far; a second call changes nothing."""
    if dynamo_loaded():
        return
    for cls in _optimizer_classes():
        for name, value in list(vars(cls).items()):
            code = getattr(value, "__code__", None)
            if code is _DISABLE_DYNAMO:
                setattr(cls, name, _plain_until_dynamo(value, value.__wrapped__))
            elif code is _USE_GRAD:
                setattr(cls, name, _plain_until_dynamo(value, _plain_step(value.__wrapped__)))
            elif getattr(value, "hooked", False) and getattr(value.__wrapped__, "__code__", None) is _USE_GRAD:
                # an instance was made before: torch's profiler hook already wraps the step; keep it outermost
                inner = value.__wrapped__
                hooked = torch.optim.Optimizer.profile_hook_step(_plain_until_dynamo(inner, _plain_step(inner.__wrapped__)))
                hooked.hooked = True
                setattr(cls, name, hooked)
