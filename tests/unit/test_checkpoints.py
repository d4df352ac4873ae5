"""Checkpoint layouts people really have, and a clear error for the ones that do not fit."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch

from classifier_service.checkpoints import CheckpointError, load_classifier
from tests.factories import TINY_TIMM_ARCH, same_output, tiny_timm_classifier

ARCH = TINY_TIMM_ARCH


@pytest.fixture(scope="module")
def reference() -> torch.nn.Module:
    return tiny_timm_classifier()


@pytest.mark.parametrize(
    "layout",
    ["model_state_dict", "state_dict", "model", "state_dict_ema", "bare", "module.", "_orig_mod.",
     "module._orig_mod.", "fp16", "whole_module"],
)
def test_layouts_load_to_the_same_model(layout: str, reference: torch.nn.Module, tmp_path: Path) -> None:
    state = reference.state_dict()
    if layout in ("module.", "_orig_mod.", "module._orig_mod."):
        payload: object = {"state_dict": {layout + k: v for k, v in state.items()}}
    elif layout == "bare":
        payload = state
    elif layout == "fp16":
        payload = {"model_state_dict": {k: v.half() if v.is_floating_point() else v for k, v in state.items()}}
    elif layout == "whole_module":
        payload = {"model": reference}
    else:
        payload = {layout: state, "epoch": 3}
    path = tmp_path / "ckpt.pth"
    torch.save(payload, path)
    assert same_output(load_classifier(path, ARCH, 1), reference, atol=1e-3)


def test_wrong_arch_names_the_file(reference: torch.nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "densenet_best.pth"
    torch.save({"model_state_dict": reference.state_dict()}, path)
    with pytest.raises(CheckpointError, match=r"densenet_best\.pth.*densenet121.*missing keys"):
        load_classifier(path, "densenet121", 1)


def test_wrong_head_is_a_shape_mismatch(reference: torch.nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "two_class.pth"
    torch.save({"model_state_dict": timm.create_model(ARCH, num_classes=2).state_dict()}, path)
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_classifier(path, ARCH, 1)


def test_not_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "garbage.pth"
    path.write_bytes(b"definitely not a zip or pickle")
    with pytest.raises(CheckpointError, match="garbage.pth"):
        load_classifier(path, ARCH, 1)


def test_dict_without_weights(tmp_path: Path) -> None:
    path = tmp_path / "meta_only.pth"
    torch.save({"epoch": 1, "best_auc": 0.9}, path)
    with pytest.raises(CheckpointError, match="no model weights"):
        load_classifier(path, ARCH, 1)
