"""dlrun's Hydra sweeper for `hparams_search=optuna`: Optuna's ask-and-tell API behind Hydra's sweeper interface,
with pruning through the study's storage. Hydra finds it in the `hydra_plugins` namespace package."""
