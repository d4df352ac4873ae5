"""The weighted-vote ensemble: members, their input contract, and the vote.

Each member sees the canonical grey image resized (bilinear, antialiased) to its own
square input size, scaled to [0, 1], stacked to 3 channels and normalised with its
mean/std; this happens on the model's device. The ensemble score is the weighted mean
of member probabilities; Abnormal iff score > threshold. Training code uses the same
``preprocess`` so train and serve see identical tensors.

This is the torch path (CUDA: fp16/bf16 + channels_last; CPU with ``MODEL_BACKEND=torch``)
and the reference the classifier's ONNX graph (:mod:`classifier_service.graph`) is
checked against when it is exported.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from classifier_service.checkpoints import load_classifier
from model_server.dtypes import compute_dtype
from shared.bundle import ClassifierSpec, MemberSpec, check_pins, resolve_checkpoint

log = logging.getLogger(__name__)


def to_device_batch(images: list[np.ndarray], device: torch.device) -> list[torch.Tensor]:
    """uint8 ``(H, W)`` arrays -> float ``[1, 1, H, W]`` tensors in [0, 1] on ``device``."""
    tensors = []
    for image in images:
        tensor = torch.from_numpy(image).to(device, non_blocking=True)
        tensors.append(tensor.to(torch.float32).div_(255.0)[None, None])
    return tensors


def resize_square(images: list[torch.Tensor], size: int) -> torch.Tensor:
    """Each ``[1,1,H,W]`` image resized to ``size x size``; returns ``[N,1,size,size]``."""
    resized = [
        F.interpolate(
            image, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
        for image in images
    ]
    return torch.cat(resized, dim=0)


def normalise(batch: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """Grey ``[N,1,S,S]`` -> 3-channel ImageNet-style input ``[N,3,S,S]``."""
    mean_t = torch.tensor(mean, device=batch.device, dtype=batch.dtype).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=batch.device, dtype=batch.dtype).view(1, 3, 1, 1)
    return (batch.expand(-1, 3, -1, -1) - mean_t) / std_t


def preprocess(images: list[torch.Tensor], member: MemberSpec) -> torch.Tensor:
    """The member's input contract, from ``to_device_batch`` output."""
    return normalise(resize_square(images, member.input_size), member.mean, member.std)


def probability_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """One logit -> sigmoid; two or more -> softmax probability of class 1 (Abnormal)."""
    logits = logits.float()
    if logits.shape[1] == 1:
        return torch.sigmoid(logits[:, 0])
    return torch.softmax(logits, dim=1)[:, 1]


def weighted_vote(member_probabilities: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``[N, M]`` member probabilities -> ``[N]`` weighted mean (weights need not sum to 1)."""
    return member_probabilities @ (weights / weights.sum())


def decide(scores: np.ndarray, threshold: float) -> np.ndarray:
    """The Normal/Abnormal call, made here only: Abnormal iff score > threshold (strict)."""
    return np.asarray(scores) > threshold


@dataclass
class Member:
    spec: MemberSpec
    model: nn.Module
    checkpoint: Path
    sha256: str


class Ensemble:
    """Loaded members on one device; ``predict`` runs every member on a list of images."""

    def __init__(
        self,
        spec: ClassifierSpec,
        model_dir: Path,
        device: torch.device,
        *,
        precision: str = "auto",
    ) -> None:
        self.spec = spec
        self.device = device
        self.dtype = compute_dtype(device, precision)
        self.members: list[Member] = []
        for index, member_spec in enumerate(spec.members):
            field = f"classifier.members[{index}].checkpoint"
            path = resolve_checkpoint(model_dir, member_spec.checkpoint, field)
            sha256, trusted = check_pins(path, member_spec, field)
            model = load_classifier(
                path, member_spec.arch, member_spec.num_classes, trusted=trusted
            )
            self.members.append(Member(member_spec, self._place(model), path, sha256))
        self.weights = np.array([m.weight for m in spec.members], dtype=np.float64)

    def _place(self, model: nn.Module) -> nn.Module:
        model = model.to(self.device)
        if self.dtype != torch.float32:
            model = model.to(self.dtype).to(memory_format=torch.channels_last)
        return model

    @property
    def member_names(self) -> list[str]:
        return [member.spec.name for member in self.members]

    @torch.inference_mode()
    def member_probabilities(self, images: list[np.ndarray]) -> np.ndarray:
        """``[N, M]`` probabilities of Abnormal, one column per member."""
        tensors = to_device_batch(images, self.device)
        resized: dict[int, torch.Tensor] = {}  # members sharing a size share the resize
        columns = []
        for member in self.members:
            size = member.spec.input_size
            if size not in resized:
                resized[size] = resize_square(tensors, size)
            batch = normalise(resized[size], member.spec.mean, member.spec.std)
            if self.dtype != torch.float32:
                batch = batch.to(self.dtype).contiguous(memory_format=torch.channels_last)
            columns.append(probability_from_logits(member.model(batch)))
        return torch.stack(columns, dim=1).float().cpu().numpy().astype(np.float64)

    def predict(self, images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """``([N] ensemble scores, [N, M] member probabilities)``."""
        members = self.member_probabilities(images)
        return weighted_vote(members, self.weights), members
