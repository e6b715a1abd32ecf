"""Reading rosbag2 recordings into synchronized surround samples, and the training cache.

Modules: ``config`` (DataConfig), ``bag`` (BagSource, read_samples), ``layout``
(discovery of cameras/TF/LiDAR), ``sample`` (SurroundSample), ``store``
(TensorStore), ``cache`` (build_cache, SurroundDataset), ``inspect``
(``fsmde inspect``). The torch-dependent names (store, cache) are imported
lazily so ``fsmde inspect`` and the bag reader start without loading torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from fsmde_core.data.bag import BagSource, Moment, ReadStats, read_samples
from fsmde_core.data.config import CameraTopics, DataConfig
from fsmde_core.data.errors import BagError
from fsmde_core.data.inspect import add_inspect_arguments, inspect_bag, run_inspect
from fsmde_core.data.layout import BagLayout
from fsmde_core.data.sample import SampleSource, SurroundSample
from fsmde_core.messages import MalformedMessageError

_LAZY = {
    "TensorStore": "fsmde_core.data.store",
    "build_cache": "fsmde_core.data.cache",
    "cache_key": "fsmde_core.data.cache",
    "CacheIndex": "fsmde_core.data.cache",
    "SurroundDataset": "fsmde_core.data.cache",
}

__all__ = [
    "BagError",
    "BagLayout",
    "BagSource",
    "CacheIndex",
    "CameraTopics",
    "DataConfig",
    "MalformedMessageError",
    "Moment",
    "ReadStats",
    "SampleSource",
    "SurroundDataset",
    "SurroundSample",
    "TensorStore",
    "add_inspect_arguments",
    "build_cache",
    "cache_key",
    "inspect_bag",
    "read_samples",
    "run_inspect",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
