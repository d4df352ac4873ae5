"""``spine convert-checkpoint IN OUT``: a checkpoint's weights, read without running its code.

A checkpoint whose pickle needs globals outside :mod:`model_server.safe_load`'s
allow-list is refused at start-up. It is converted here (once, by its owner, or in
memory when the manifest names that exact file by ``allow_unsafe_pickle_sha256``) with
an *inert* unpickler: torch's own weights-only globals (tensor and storage rebuilds,
``OrderedDict``...) and the plain data types of the safe-load table are real; every other
global (a model class, ``os.system``, ``builtins.exec``...) becomes an :class:`Inert`
record of its name, arguments and state, so nothing the pickle names is ever called.
Modules' tensors are then read from the records' ``_parameters`` / ``_buffers`` /
``_modules``, as ``nn.Module.state_dict`` would.

Output layout (``format: spine-safe-checkpoint/1``): ``model_state_dict`` (tensors),
``metadata`` (the input's other plain entries: numbers, strings, lists, dicts; numpy
scalars and arrays become Python values, namespaces dicts, paths strings),
``converted_from`` (file name and sha256). For an Ultralytics ``.pt`` also
``ultralytics_yaml`` (the network's architecture, plain data) and ``names``.
"""

from __future__ import annotations

import _compat_pickle
import argparse
import datetime
import logging
import pathlib
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shared.bundle import sha256_file

log = logging.getLogger(__name__)

SAFE_FORMAT = "spine-safe-checkpoint/1"
STATE_DICT_KEYS = ("model_state_dict", "state_dict", "state_dict_ema", "model", "ema")


class Inert:
    """What the inert unpickler builds for a global it will not call: a record only."""

    pickle_name = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.inert_args = args

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict, slots)
            state = {**(state[0] or {}), **(state[1] or {})}
        if isinstance(state, Mapping):
            self.__dict__.update(state)

    def __repr__(self) -> str:
        return f"<inert {self.pickle_name}>"


def _inert_class(module: str, name: str) -> type[Inert]:
    return type(name, (Inert,), {"pickle_name": f"{module}.{name}"})


def _real_globals() -> dict[str, Any]:
    from torch._weights_only_unpickler import _get_allowed_globals

    from model_server.safe_load import BENIGN_GLOBALS

    plain_builtins = {"builtins.set": set, "builtins.frozenset": frozenset}
    return {**_get_allowed_globals(), **BENIGN_GLOBALS, **plain_builtins}


class _InertUnpickler(pickle.Unpickler):
    """Real objects for torch's weights-only globals and plain data; :class:`Inert` else."""

    real = _real_globals()

    def find_class(self, module: str, name: str) -> Any:
        # Protocol-2 pickles name Python 2 modules (__builtin__, copy_reg): map them as
        # pickle's own find_class does, before looking anything up.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        found = self.real.get(f"{module}.{name}")
        return found if found is not None else _inert_class(module, name)


class _InertPickleModule:
    """The ``pickle_module`` torch.load unpickles with: its ``Unpickler`` is inert."""

    Unpickler = _InertUnpickler
    load = staticmethod(lambda file, **kw: _InertUnpickler(file, **kw).load())
    __name__ = "spine_inert_pickle"


def inert_load(path: Path) -> object:
    """``path`` unpickled without calling any global outside torch's weights-only set."""
    # weights_only=False only so that torch uses our unpickler; it is never the stdlib one.
    return torch.load(path, map_location="cpu", weights_only=False,
                      pickle_module=_InertPickleModule)


def plain(value: Any, depth: int = 0) -> Any:
    """``value`` as plain data (numbers, strings, lists, dicts), or ``None`` if it is not."""
    if depth > 20:
        return None
    if isinstance(value, np.generic):  # before float: np.float64 is a float subclass
        return value.item()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
        return value.tolist()
    if isinstance(value, pathlib.PurePath):
        return str(value)
    if isinstance(value, datetime.date | datetime.datetime):
        return value.isoformat()
    if isinstance(value, argparse.Namespace) or type(value).__name__.endswith("Namespace"):
        value = dict(vars(value))
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            converted = plain(item, depth + 1)
            if converted is not None or item is None:
                out[key if isinstance(key, int | str) else str(key)] = converted
        return out
    if isinstance(value, list | tuple | set | frozenset):
        return [plain(item, depth + 1) for item in value]
    return None


def _module_state(record: Inert, prefix: str = "") -> dict[str, torch.Tensor]:
    """``nn.Module.state_dict()`` of an inert module record (persistent buffers only)."""
    state: dict[str, torch.Tensor] = {}
    attrs = record.__dict__
    skipped = attrs.get("_non_persistent_buffers_set") or set()
    for kind in ("_parameters", "_buffers"):
        for name, tensor in (attrs.get(kind) or {}).items():
            if isinstance(tensor, torch.Tensor) and name not in skipped:
                state[prefix + name] = tensor.detach().clone()
    for name, child in (attrs.get("_modules") or {}).items():
        if isinstance(child, Inert):
            state.update(_module_state(child, f"{prefix}{name}."))
    return state


def _is_module(value: object) -> bool:
    return isinstance(value, Inert) and isinstance(value.__dict__.get("_modules"), Mapping)


def _tensors(value: object) -> dict[str, torch.Tensor] | None:
    if _is_module(value):
        return _module_state(value)  # type: ignore[arg-type]
    if isinstance(value, Mapping) and value and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items()
    ):
        return dict(value)
    return None


def safe_payload(checkpoint: object, source: Path) -> dict[str, Any]:
    """The weights-only dict written for ``checkpoint`` (already unpickled)."""
    payload: dict[str, Any] = {
        "format": SAFE_FORMAT,
        "converted_from": {"file": source.name, "sha256": sha256_file(source)},
    }
    network = None
    if isinstance(checkpoint, Mapping):
        for key in STATE_DICT_KEYS:
            state = _tensors(checkpoint.get(key))
            if state is not None:
                network = checkpoint.get(key)
                break
        else:
            state = _tensors(checkpoint)
        payload["metadata"] = {
            str(k): plain(v) for k, v in checkpoint.items()
            if k not in STATE_DICT_KEYS and k not in ("optimizer", "optimizer_state_dict")
            and plain(v) is not None
        }
    else:
        state, network = _tensors(checkpoint), checkpoint
        payload["metadata"] = {}
    if state is None:
        raise ValueError(f"{source}: no model weights found to convert")
    payload["model_state_dict"] = {k: v.float() if v.is_floating_point() else v
                                   for k, v in state.items()}
    yaml_cfg = getattr(network, "yaml", None)
    if _is_module(network) and isinstance(yaml_cfg, dict):  # Ultralytics
        names = getattr(network, "names", None)
        if isinstance(names, list):
            names = dict(enumerate(names))
        payload["ultralytics_yaml"] = plain(yaml_cfg)
        payload["names"] = {int(k): str(v) for k, v in (names or {}).items()}
    return payload


def convert_checkpoint(source: Path, target: Path) -> dict[str, Any]:
    """Read ``source`` inertly and write its weights-only form to ``target``."""
    from model_server.safe_load import safe_load

    if source.resolve() == target.resolve():
        raise ValueError("OUT must differ from IN (keep the original until OUT is checked)")
    payload = safe_payload(inert_load(source), source)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.tmp")
    torch.save(payload, staging)
    safe_load(staging)  # proves the output needs no unsafe global at all
    staging.replace(target)
    return payload
