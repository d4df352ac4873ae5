"""Load classifier weights from the checkpoint layouts people really have.

Accepted: the original's ``{'epoch', 'model_state_dict', 'optimizer_state_dict', ...}``,
``state_dict``, ``model``, ``state_dict_ema`` (timm's EMA), a bare state dict or a whole
pickled module; keys prefixed ``module.`` (DataParallel) or ``_orig_mod.`` (torch.compile);
fp16 tensors; ``spine convert-checkpoint`` output. A checkpoint that does not fit its
architecture is a start-up error naming the file: never a silent partial load that would
serve random layers. Reading is :func:`model_server.safe_load.safe_load`
(``weights_only=True`` and an allow-list): a pickle that needs anything else is refused.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import timm
import torch
from torch import nn

from model_server.safe_load import CLASSIFIER, UnreadableCheckpointError, load_checkpoint_file

log = logging.getLogger(__name__)

STATE_DICT_KEYS = ("model_state_dict", "state_dict", "state_dict_ema", "model")
STRIPPED_PREFIXES = ("module.", "_orig_mod.")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be loaded into its declared architecture."""


def read_checkpoint(path: Path, *, trusted: bool = False) -> object:
    """``torch.load(weights_only=True)`` on CPU with the classifier allow-list.

    Numpy scalars, ``argparse.Namespace`` and the like that training scripts store next
    to the weights are on the list; anything else raises
    :class:`~model_server.safe_load.UnsafeCheckpointError` unless ``trusted`` (the
    manifest's ``allow_unsafe_pickle_sha256`` names this exact file).
    """
    try:
        return load_checkpoint_file(path, CLASSIFIER, trusted=trusted)
    except UnreadableCheckpointError as exc:
        raise CheckpointError(str(exc)) from exc


def _is_state_dict(value: object) -> bool:
    return (
        isinstance(value, Mapping)
        and len(value) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())
    )


def extract_state_dict(checkpoint: object, path: Path) -> dict[str, torch.Tensor]:
    """Find the model weights inside whatever ``torch.save`` wrote."""
    if isinstance(checkpoint, nn.Module):
        return checkpoint.state_dict()
    if isinstance(checkpoint, Mapping):
        for key in STATE_DICT_KEYS:
            value = checkpoint.get(key)
            if isinstance(value, nn.Module):
                return value.state_dict()
            if _is_state_dict(value):
                return dict(value)  # type: ignore[arg-type]
        if _is_state_dict(checkpoint):
            return dict(checkpoint)  # type: ignore[arg-type]
        keys = sorted(str(key) for key in checkpoint)[:8]
        raise CheckpointError(
            f"{path}: no model weights found; expected one of {list(STATE_DICT_KEYS)} or a "
            f"bare state dict, found keys {keys}"
        )
    raise CheckpointError(f"{path}: unexpected checkpoint type {type(checkpoint).__name__}")


def strip_prefixes(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove wrapper prefixes (repeatedly: ``module._orig_mod.`` happens)."""
    cleaned: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        changed = True
        while changed:
            changed = False
            for prefix in STRIPPED_PREFIXES:
                if key.startswith(prefix):
                    key = key[len(prefix) :]
                    changed = True
        cleaned[key] = value
    return cleaned


def build_model(arch: str, num_classes: int) -> nn.Module:
    """A timm model with random weights (never downloads: pretrained=False)."""
    try:
        return timm.create_model(arch, pretrained=False, num_classes=num_classes)
    except RuntimeError as exc:  # timm raises RuntimeError for unknown names
        raise CheckpointError(f"unknown timm architecture {arch!r}: {exc}") from exc


def load_classifier(
    path: Path, arch: str, num_classes: int, *, trusted: bool = False
) -> nn.Module:
    """``arch`` with the checkpoint's weights, strictly: every key and shape must match."""
    model = build_model(arch, num_classes)
    checkpoint = read_checkpoint(path, trusted=trusted)
    state_dict = strip_prefixes(extract_state_dict(checkpoint, path))
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = [
        f"{key} {tuple(state_dict[key].shape)} vs {tuple(tensor.shape)}"
        for key, tensor in expected.items()
        if key in state_dict and state_dict[key].shape != tensor.shape
    ]
    if missing or unexpected or mismatched:
        details = []
        if missing:
            details.append(f"{len(missing)} missing keys (e.g. {missing[:3]})")
        if unexpected:
            details.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})")
        if mismatched:
            details.append(f"{len(mismatched)} shape mismatches (e.g. {mismatched[:2]})")
        raise CheckpointError(
            f"{path}: does not fit timm arch {arch!r} with num_classes={num_classes}: "
            + "; ".join(details)
        )
    model.load_state_dict(state_dict, strict=True)  # copies cast fp16 tensors to fp32
    return model.eval()
