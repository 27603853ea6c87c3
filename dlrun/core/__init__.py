"""What every layer may use: errors, text helpers, atomic file I/O and where this process stands among ranks.

Nothing here imports another part of dlrun, torch, or anything slow."""

__version__ = "0.1.0"  # dlrun's version, read by `dlrun --version` and by the package (dlrun.__version__)
