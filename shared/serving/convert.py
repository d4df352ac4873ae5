"""``spine convert-checkpoint IN OUT``: the one place a checkpoint is unpickled in full.

A checkpoint whose pickle needs globals outside :mod:`shared.serving.safe_load`'s
allow-list is refused at start-up. Its owner converts it once, on purpose: this module
runs the full (code-executing) unpickling under the operator's eye, with a warning, and
writes a weights-only file: plain tensors plus plain metadata, which the services load
with ``weights_only=True``. The same full load serves a file the manifest trusts by
``allow_unsafe_pickle_sha256``. No other product code calls ``weights_only=False``.

Output layout (``format: spine-safe-checkpoint/1``): ``model_state_dict`` (tensors),
``metadata`` (the input's other plain entries: numbers, strings, lists, dicts; numpy
scalars and arrays become Python values, namespaces dicts, paths strings),
``converted_from`` (file name and sha256). For an Ultralytics ``.pt`` also
``ultralytics_yaml`` (the network's architecture, plain data) and ``names``.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import pathlib
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from shared.bundle import sha256_file

log = logging.getLogger(__name__)

SAFE_FORMAT = "spine-safe-checkpoint/1"
WARNING = (
    "WARNING: {path} is being unpickled IN FULL (weights_only=False): any code its pickle "
    "names RUNS NOW, with your permissions. Do this only for a file you trust."
)
STATE_DICT_KEYS = ("model_state_dict", "state_dict", "state_dict_ema", "model", "ema")


def unsafe_full_load(path: Path) -> object:
    """Unpickle ``path`` with no restriction, loudly. Callers: conversion and sha256 trust."""
    message = WARNING.format(path=path)
    log.warning(message)
    print(message, file=sys.stderr, flush=True)
    return torch.load(path, map_location="cpu", weights_only=False)


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


def _tensors(value: object) -> dict[str, torch.Tensor] | None:
    if isinstance(value, nn.Module):
        return {k: v.detach().clone() for k, v in value.state_dict().items()}
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
    if isinstance(network, nn.Module) and isinstance(yaml_cfg, dict):  # Ultralytics
        names = getattr(network, "names", None)
        if isinstance(names, list):
            names = dict(enumerate(names))
        payload["ultralytics_yaml"] = plain(yaml_cfg)
        payload["names"] = {int(k): str(v) for k, v in (names or {}).items()}
    return payload


def convert_checkpoint(source: Path, target: Path) -> dict[str, Any]:
    """Full-load ``source`` (with the warning) and write its weights-only form to ``target``."""
    from shared.serving.safe_load import safe_load

    if source.resolve() == target.resolve():
        raise ValueError("OUT must differ from IN (keep the original until OUT is checked)")
    payload = safe_payload(unsafe_full_load(source), source)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.tmp")
    torch.save(payload, staging)
    safe_load(staging)  # proves the output needs no unsafe global at all
    staging.replace(target)
    return payload
