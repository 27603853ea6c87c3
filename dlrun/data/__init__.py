"""Files to batches on the training device: sources read datasets into uint8 tensors, loaders serve them."""

from dlrun.data.loaders import DeviceLoader, FileLoader, make_loaders
from dlrun.data.sources import CACHE_NAME, Data, FileSplit, Split, known_shape, known_task, load_data

__all__ = [
    "CACHE_NAME",
    "Data",
    "DeviceLoader",
    "FileLoader",
    "FileSplit",
    "Split",
    "known_shape",
    "known_task",
    "load_data",
    "make_loaders",
]
