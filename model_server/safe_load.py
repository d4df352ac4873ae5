"""Checkpoints load as data, never as code: ``torch.load(weights_only=True)`` and an allow-list.

A pickle can call any function it names (``os.system`` included), so a bundle received
from someone else must never be unpickled in full. Every checkpoint is read with torch's
restricted unpickler; the only globals it may name beyond torch's own tensors are:

- :data:`BENIGN_GLOBALS`: plain data that real training scripts store beside the weights
  (numpy scalars, dtypes and arrays, ``argparse.Namespace``, ``OrderedDict``, datetimes,
  paths rebuilt as *pure* paths, a few builtin containers). Their constructors compute
  nothing but a value.
- for a whole pickled network, :class:`ModulePolicy`: ``nn.Module`` subclasses defined in
  an allowed module prefix (``torch.nn.modules.``, ``timm.models.``/``timm.layers.`` for
  the classifier, ``ultralytics.nn.modules.`` and ``ultralytics.nn.tasks.DetectionModel``
  for the detector), plus a few named data classes. A class counts only where it is
  *defined* (``cls.__module__``), so a re-export such as ``ultralytics.nn.tasks.Path`` does
  not pass, and :data:`DENIED_ROOTS` / :data:`DENIED_NAMES` are refused before anything is
  imported.

Allowing a class to torch's unpickler also lets a pickle *call* it (the ``REDUCE``
opcode) with arguments of its choosing, and some constructors act: Ultralytics'
``DetectionModel(cfg)`` ``eval``s the cfg's activation string and downloads a cfg URL.
``torch.save`` rebuilds a network's modules with ``NEWOBJ`` (``cls.__new__``, no
constructor) and ``BUILD`` (``__setstate__``), never ``REDUCE``, so
:func:`called_globals` walks the pickle's opcodes (statically, nothing runs) and a
checkpoint that calls a policy class is refused. The benign data types may be called:
their constructors only make a value.

Anything else is refused at start-up by :class:`UnsafeCheckpointError`, naming the file,
the globals and the two ways out: ``spine convert-checkpoint IN OUT`` (once, on purpose),
or ``allow_unsafe_pickle_sha256:`` in the manifest for that exact file.
"""

from __future__ import annotations

import argparse
import builtins
import collections
import contextlib
import datetime
import importlib
import logging
import pathlib
import pickle
import pickletools
import re
import threading
import types
import zipfile
from _compat_pickle import IMPORT_MAPPING, NAME_MAPPING
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

#: Modules whose globals are code execution, file or process access: never allowed.
DENIED_ROOTS = frozenset({
    "os", "posix", "nt", "sys", "subprocess", "shutil", "importlib", "runpy", "pickle",
    "marshal", "code", "codeop", "ctypes", "socket", "pty", "multiprocessing", "webbrowser",
    "io", "tempfile", "builtins", "functools", "operator", "types", "inspect", "shlex",
    "signal", "threading", "asyncio", "urllib", "http", "requests", "pip", "setuptools",
})
#: Attribute names refused whatever their module (a prefix rule never admits these).
DENIED_NAMES = frozenset({
    "eval", "exec", "compile", "__import__", "getattr", "setattr", "delattr", "open",
    "system", "popen", "Popen", "spawn", "call", "run", "check_call", "check_output",
    "load", "loads", "execv", "execve", "remove", "unlink", "rmtree", "torch_safe_load",
    "attempt_load_weights", "attempt_load_one_weight", "load_checkpoint",
})

REMEDY = (
    "Convert it once, on purpose, with `spine convert-checkpoint IN OUT` (it runs the full "
    "unpickling under your eye and writes a weights-only file), or, if you trust this exact "
    "file, set `allow_unsafe_pickle_sha256: <its sha256>` for it in the bundle's manifest.yaml"
)


class UnsafeCheckpointError(RuntimeError):
    """The checkpoint's pickle needs globals outside the allow-list; it was not unpickled."""


class UnreadableCheckpointError(RuntimeError):
    """Not a torch checkpoint at all (truncated, empty, another format)."""


def _benign_table() -> dict[str, Any]:
    """``pickle name -> object`` for plain data types (aliases rebuild under current names)."""
    scalar = np.float64(0).__reduce__()[0]  # numpy's scalar rebuild (numpy 1 and 2 names)
    reconstruct = np.zeros(1).__reduce__()[0]  # numpy's ndarray rebuild
    table: dict[str, Any] = {
        "numpy.core.multiarray.scalar": scalar,
        "numpy._core.multiarray.scalar": scalar,
        "numpy.core.multiarray._reconstruct": reconstruct,
        "numpy._core.multiarray._reconstruct": reconstruct,
        "numpy.ndarray": np.ndarray,
        "numpy.dtype": np.dtype,
        "argparse.Namespace": argparse.Namespace,
        "types.SimpleNamespace": types.SimpleNamespace,
        "collections.OrderedDict": collections.OrderedDict,
        "collections.defaultdict": collections.defaultdict,
        "collections.Counter": collections.Counter,
        "collections.deque": collections.deque,
        "datetime.datetime": datetime.datetime,
        "datetime.date": datetime.date,
        "datetime.time": datetime.time,
        "datetime.timedelta": datetime.timedelta,
        "datetime.timezone": datetime.timezone,
    }
    for name in ("list", "dict", "tuple", "set", "frozenset", "int", "float", "str", "bool",
                 "bytes", "slice", "complex"):
        table[f"builtins.{name}"] = getattr(builtins, name)  # value types only
    # Paths in a training script's args: rebuilt as pure paths (no file-system methods).
    for module in ("pathlib", "pathlib._local"):
        table[f"{module}.PosixPath"] = pathlib.PurePosixPath
        table[f"{module}.PurePosixPath"] = pathlib.PurePosixPath
        table[f"{module}.WindowsPath"] = pathlib.PureWindowsPath
        table[f"{module}.PureWindowsPath"] = pathlib.PureWindowsPath
    # numpy dtype instances are rebuilt as their concrete class (numpy.dtypes.Float64DType...)
    for code in "?bBhHiIlLqQefdgFDGUSMm":
        with contextlib.suppress(TypeError):
            cls = type(np.dtype(code))
            table[f"numpy.dtypes.{cls.__name__}"] = cls
    return table


BENIGN_GLOBALS: dict[str, Any] = _benign_table()


@dataclass(frozen=True)
class ModulePolicy:
    """Which pickled classes a whole pickled network may rebuild.

    ``prefixes``: module prefixes whose ``nn.Module`` subclasses are allowed (the class
    must be defined there). ``exact``: full names of further classes (modules or plain
    data classes, e.g. a loss object an old trainer left on the model). ``aliases``:
    legacy names mapped to a current class, imported lazily as ``"module:attr"``.
    """

    name: str
    prefixes: tuple[str, ...]
    exact: frozenset[str] = frozenset()
    aliases: Mapping[str, str] = field(default_factory=dict)


WEIGHTS_ONLY = ModulePolicy("weights only", prefixes=())
CLASSIFIER = ModulePolicy(
    "timm classifier", prefixes=("torch.nn.modules.", "timm.models.", "timm.layers.")
)
ULTRALYTICS = ModulePolicy(
    "Ultralytics detector",
    prefixes=("torch.nn.modules.", "ultralytics.nn.modules."),
    exact=frozenset({
        "ultralytics.nn.tasks.DetectionModel",
        "ultralytics.utils.IterableSimpleNamespace",  # model.args in older checkpoints
        # A loss object older trainers left on the EMA model (never called here):
        "ultralytics.utils.loss.v8DetectionLoss", "ultralytics.utils.loss.BboxLoss",
        "ultralytics.utils.loss.DFLoss", "ultralytics.utils.loss.E2EDetectLoss",
        "ultralytics.utils.tal.TaskAlignedAssigner",
    }),
    aliases={
        "ultralytics.nn.tasks.YOLOv10DetectionModel": "ultralytics.nn.tasks:DetectionModel",
        "ultralytics.nn.modules.block.Silence": "torch.nn:Identity",
        "ultralytics.yolo.utils.IterableSimpleNamespace": (
            "ultralytics.utils:IterableSimpleNamespace"
        ),
    },
)


def denied(name: str) -> bool:
    """Globals that are code execution or system access whatever the policy."""
    module, _, attr = name.rpartition(".")
    return module.split(".")[0] in DENIED_ROOTS or attr in DENIED_NAMES


def _admit(name: str, policy: ModulePolicy) -> Any | None:
    """The class ``name`` stands for, if ``policy`` allows it; else ``None``."""
    if denied(name):
        return None
    if name in policy.aliases:
        module_name, _, attr = policy.aliases[name].partition(":")
        return getattr(importlib.import_module(module_name), attr)
    module_name, _, attr = name.rpartition(".")
    by_prefix = any(name.startswith(prefix) for prefix in policy.prefixes)
    if not (by_prefix or name in policy.exact):
        return None
    try:
        obj = getattr(importlib.import_module(module_name), attr, None)
    except ImportError:
        return None
    if not isinstance(obj, type) or obj.__module__ != module_name:
        return None  # functions, modules and re-exported names never pass
    if by_prefix and not issubclass(obj, nn.Module):
        return None
    return obj


def _data_pickle(path: Path) -> bytes | None:
    """The main pickle of a zip-format torch checkpoint (``<archive>/data.pkl``)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
            return archive.read(names[0]) if names else None
    except (zipfile.BadZipFile, OSError, KeyError):
        return None


def scan_pickle(data: bytes) -> tuple[set[str], set[str]]:
    """``(every global named, the globals applied by REDUCE)``: a static walk, nothing runs.

    A small stack machine over :mod:`pickletools`' opcode table: ``GLOBAL`` pushes its
    name, the memo opcodes store and fetch, every other opcode pops and pushes what the
    table says; at ``REDUCE`` the callable is the item under the argument tuple.
    """
    mark = object()
    stack: list[object] = []
    memo: dict[int, object] = {}
    called: set[str] = set()
    named: set[str] = set()
    try:
        for op, arg, _pos in pickletools.genops(data):
            name = op.name
            if name == "GLOBAL":
                module, _, attr = str(arg).partition(" ")
                module, attr = _python3_name(module, attr)
                named.add(f"{module}.{attr}")
                stack.append(f"{module}.{attr}")
                continue
            if name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[int(arg)] = stack[-1] if stack else None
                continue
            if name == "MEMOIZE":
                memo[len(memo)] = stack[-1] if stack else None
                continue
            if name in ("GET", "BINGET", "LONG_BINGET"):
                stack.append(memo.get(int(arg)))
                continue
            if name == "REDUCE" and len(stack) >= 2 and isinstance(stack[-2], str):
                called.add(stack[-2])
            if name in ("NEWOBJ_EX", "OBJ", "INST") or name == "STACK_GLOBAL":
                called.add(f"<{name}>")  # torch's unpickler refuses these; so do we
            before = op.stack_before
            if pickletools.markobject in before:
                while stack and stack[-1] is not mark:
                    stack.pop()
                if stack:
                    stack.pop()
                for _ in range(before.index(pickletools.markobject)):
                    if stack:
                        stack.pop()
            else:
                for _ in before:
                    if stack:
                        stack.pop()
            for item in op.stack_after:
                stack.append(mark if item is pickletools.markobject else None)
    except Exception:  # noqa: BLE001 - malformed: torch.load refuses it with its own error
        called.add("<malformed pickle>")
    return named, called


def _python3_name(module: str, attr: str) -> tuple[str, str]:
    """Protocol-2 pickles name ``builtins`` ``__builtin__``; map like torch's reader does."""
    if (module, attr) in NAME_MAPPING:
        return NAME_MAPPING[(module, attr)]
    return IMPORT_MAPPING.get(module, module), attr


def torch_default_globals() -> set[str]:
    """Names torch's own restricted unpickler allows (tensor rebuilds, dtypes, ...)."""
    from torch import _weights_only_unpickler

    return set(_weights_only_unpickler._get_allowed_globals())


def allowed_entries(names: list[str], policy: ModulePolicy) -> tuple[list[Any], list[str]]:
    """``(safe_globals entries, refused names)`` for the globals a checkpoint names."""
    entries: list[Any] = []
    refused: list[str] = []
    for name in names:
        if name in BENIGN_GLOBALS:  # a closed table: builtins.eval is not in it
            entries.append((BENIGN_GLOBALS[name], name))
            continue
        obj = _admit(name, policy)
        if obj is None:
            refused.append(name)
        else:
            entries.append((obj, name))
    # dtype instances are rebuilt as their concrete classes, which the scan cannot see
    if "numpy.dtype" in names:
        entries += [(obj, key) for key, obj in BENIGN_GLOBALS.items()
                    if key.startswith("numpy.dtypes.")]
    return entries, refused


_LOAD_LOCK = threading.Lock()  # safe_globals() edits a process-wide set: one load at a time


def safe_load(path: Path, policy: ModulePolicy = WEIGHTS_ONLY) -> object:
    """``torch.load(path, weights_only=True)`` with only the globals ``policy`` admits.

    Raises :class:`UnsafeCheckpointError` (naming the file, the globals and the remedy)
    when the pickle needs anything else, and :class:`UnreadableCheckpointError` when the
    file is not a torch checkpoint. Nothing of a refused pickle is ever executed.
    """
    data = _data_pickle(path)
    if data is None:  # legacy format or garbage: data types only, never a class
        entries, refused = [(obj, key) for key, obj in BENIGN_GLOBALS.items()], []
    else:
        named, called = scan_pickle(data)
        torch_own = torch_default_globals()
        entries, refused = allowed_entries(sorted(named - torch_own), policy)
        refused += sorted(
            f"{name} (called with arguments, not rebuilt)"
            for name in called - torch_own - set(BENIGN_GLOBALS)
            if name not in refused
        )
    if refused:
        raise UnsafeCheckpointError(
            f"{path}: refused to load: its pickle names globals outside the {policy.name} "
            f"allow-list: {', '.join(refused)}. {REMEDY}."
        )
    try:
        with _LOAD_LOCK, torch.serialization.safe_globals(entries):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = unpickler_detail(exc)
        if not re.search(r"global|reduce|allowlist|Can only", detail, re.IGNORECASE):
            raise UnreadableCheckpointError(
                f"{path}: not a readable torch checkpoint: {detail}"
            ) from exc
        raise UnsafeCheckpointError(
            f"{path}: refused to load: the restricted unpickler stopped at a global outside "
            f"the {policy.name} allow-list ({detail}). {REMEDY}."
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as exc:
        raise UnreadableCheckpointError(f"{path}: not a readable torch checkpoint: {exc}") from exc


def unpickler_detail(exc: BaseException) -> str:
    """The restricted unpickler's own reason, without torch's generic advice around it
    (which suggests loading without the restriction: exactly what must not be done here)."""
    text = str(exc)
    match = re.search(r"WeightsUnpickler error:\s*(.*?)(?:\n\s*\n|$)", text, re.DOTALL)
    detail = (match.group(1) if match else text).strip()
    return " ".join(detail.split())[:500] or type(exc).__name__


def load_checkpoint_file(path: Path, policy: ModulePolicy, *, trusted: bool = False) -> object:
    """:func:`safe_load`; a refused file is converted inertly in memory only when ``trusted``.

    ``trusted`` means the manifest's ``allow_unsafe_pickle_sha256`` equals this file's
    sha256 (checked by the caller, see :func:`shared.bundle.check_pins`).
    """
    try:
        return safe_load(path, policy)
    except UnsafeCheckpointError as exc:
        if not trusted:
            raise
        from model_server.convert import inert_load, safe_payload

        log.warning("%s; the manifest trusts this exact file by sha256: reading its weights "
                    "inertly (nothing it names is called)", exc)
        return safe_payload(inert_load(path), path)
