"""What learns: the networks a config's `model._target_` names, and the initialisers of their weights."""

from dlrun.model.nets import CNN, MLP, LeNet5, LogisticRegression, count_parameters
from dlrun.model.tv_models import TorchvisionModel

__all__ = ["CNN", "MLP", "LeNet5", "LogisticRegression", "TorchvisionModel", "count_parameters"]
