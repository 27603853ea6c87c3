"""dlrun's grid sweeper: Hydra's basic sweeper, each job's config composed once. `dlrun train` makes it the `basic`
sweeper of its own commands (train_cmd.py); Hydra finds it in the `hydra_plugins` namespace package."""
