"""Train the ensemble members with timm; pick weights and threshold on validation.

Each member is trained on canonical images (``training.canonical``) passed through the
serving code's own ``resize_square`` and ``normalise`` (train/serve parity), and saved in
the original system's checkpoint format.

Image labels alone teach a from-scratch network slowly: a few hundred "abnormal
somewhere" labels barely move it off chance on 2 CPU cores. So while training, a 1x1
convolution on the member's last feature map also predicts a lesion map drawn from the
readers' boxes (deep supervision). It tells the network
*where* the evidence is, and the image head learns on top of those features. The extra
head is thrown away at save time: checkpoints stay plain timm models that load strictly.

Ensemble weights and the decision threshold are chosen on the validation split, never on
the test split, and written to the manifest. Resumable: each member keeps ``last.pth``
(model, lesion head, optimiser, scheduler, epoch) and a run started again continues
where it stopped.
"""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn

from classifier_service.checkpoints import build_model
from classifier_service.ensemble import normalise, probability_from_logits, resize_square
from model_server.safe_load import safe_load
from shared.bundle import ClassifierSpec, MemberSpec, manifest_path
from training.canonical import CanonicalEntry, LabelledImages
from training.metrics import roc_auc, youden_threshold

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClassifierTrainConfig:
    epochs: int = 8
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 1e-4
    lesion_map_weight: float = 1.0  # 0 trains on image labels only
    max_grad_norm: float = 2.0
    seed: int = 0
    progress: bool = True


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resized_tensor(entries: list[CanonicalEntry], size: int, chunk: int = 32) -> torch.Tensor:
    """``[N,1,S,S]`` float in [0,1], resized exactly as the service resizes."""
    parts = []
    for start in range(0, len(entries), chunk):
        images = [
            torch.from_numpy(e.load()).float().div_(255.0)[None, None]
            for e in entries[start : start + chunk]
        ]
        parts.append(resize_square(images, size))
    return torch.cat(parts)


def lesion_maps(images: LabelledImages, size: int) -> torch.Tensor:
    """``[N,1,S,S]``: 1 inside any lesion box, in the member's resized square frame."""
    maps = torch.zeros(len(images), 1, size, size)
    for i, (entry, boxes) in enumerate(zip(images.entries, images.boxes, strict=True)):
        sx, sy = size / entry.width, size / entry.height
        for x1, y1, x2, y2 in boxes:
            top, bottom = int(y1 * sy), max(int(np.ceil(y2 * sy)), int(y1 * sy) + 1)
            left, right = int(x1 * sx), max(int(np.ceil(x2 * sx)), int(x1 * sx) + 1)
            maps[i, 0, top:bottom, left:right] = 1.0
    return maps


def augment(
    batch: torch.Tensor, maps: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Horizontal flips (of image and lesion map) and brightness/contrast jitter."""
    n = batch.shape[0]
    flip = (torch.rand(n, generator=generator) < 0.5).view(n, 1, 1, 1)
    batch = torch.where(flip, batch.flip(-1), batch)
    maps = torch.where(flip, maps.flip(-1), maps)
    contrast = 0.85 + 0.3 * torch.rand(n, 1, 1, 1, generator=generator)
    brightness = -0.08 + 0.16 * torch.rand(n, 1, 1, 1, generator=generator)
    return ((batch - 0.5) * contrast + 0.5 + brightness).clamp_(0, 1), maps


class LesionMapHead(nn.Module):
    """Training-only 1x1 conv: member features -> lesion-map logits (never saved)."""

    def __init__(self, model: nn.Module, size: int) -> None:
        super().__init__()
        with torch.no_grad():
            channels = model.forward_features(torch.zeros(1, 3, size, size)).shape[1]
        self.conv = nn.Conv2d(channels, 1, kernel_size=1)

    def loss(self, features: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
        logits = self.conv(features)
        target = nn.functional.adaptive_max_pool2d(maps, logits.shape[-2:])
        # lesions cover a few cells of the map: weight them up so they are not ignored
        return nn.functional.binary_cross_entropy_with_logits(
            logits, target, pos_weight=torch.tensor(3.0)
        )


@torch.inference_mode()
def predict(
    model: nn.Module, images: torch.Tensor, member: MemberSpec, batch_size: int = 32
) -> np.ndarray:
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        batch = normalise(images[start : start + batch_size], member.mean, member.std)
        out.append(probability_from_logits(model(batch)))
    return torch.cat(out).numpy().astype(np.float64)


def save_original_format(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int, **extra: object
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "epoch": epoch,
            "model_state_dict": model.state_dict(),
            "optimizer_state_dict": optimizer.state_dict(),
            **extra,
        },
        path,
    )


def train_member(
    member: MemberSpec,
    bundle_dir: Path,
    train: LabelledImages,
    val: LabelledImages,
    config: ClassifierTrainConfig,
    on_epoch_start: Callable[[], None] | None = None,
) -> np.ndarray:
    """Train one member; write ``model_best.pth``; return its validation probabilities.

    ``on_epoch_start`` lets a caller adjust between epochs (the demo build hands the
    classifier a second thread once the detector next to it is done).
    """
    from tqdm import tqdm

    seed_everything(config.seed)
    train_x = resized_tensor(train.entries, member.input_size)
    train_maps = lesion_maps(train, member.input_size)
    val_x = resized_tensor(val.entries, member.input_size)
    train_y = torch.from_numpy(train.labels.astype(np.float32))
    model = build_model(member.arch, member.num_classes)
    lesion_head = LesionMapHead(model, member.input_size)
    optimizer = torch.optim.AdamW(
        [*model.parameters(), *lesion_head.parameters()],
        lr=config.lr,
        weight_decay=config.weight_decay,
    )
    steps_per_epoch = max(1, (len(train_x) + config.batch_size - 1) // config.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, total_steps=config.epochs * steps_per_epoch, pct_start=0.2
    )
    best_path = bundle_dir / member.checkpoint
    last_path = bundle_dir / ".train" / member.name / "last.pth"
    start_epoch, best_auc = 0, -1.0
    if last_path.is_file():  # resume
        state = safe_load(last_path)  # weights_only=True + the benign allow-list
        model.load_state_dict(state["model_state_dict"])
        lesion_head.load_state_dict(state["lesion_head_state_dict"])
        optimizer.load_state_dict(state["optimizer_state_dict"])
        scheduler.load_state_dict(state["scheduler_state_dict"])
        start_epoch, best_auc = state["epoch"] + 1, state["best_auc"]
        log.info("resuming %s at epoch %d", member.name, start_epoch)
    generator = torch.Generator().manual_seed(config.seed)
    loss_fn = nn.BCEWithLogitsLoss()
    torch.set_grad_enabled(True)  # a process that also served may have turned it off
    for epoch in range(start_epoch, config.epochs):
        if on_epoch_start is not None:
            on_epoch_start()
        model.train()
        order = torch.randperm(len(train_x), generator=generator)
        bar = tqdm(
            range(steps_per_epoch),
            desc=f"{member.name} epoch {epoch + 1}/{config.epochs}",
            unit="batch",
            disable=not config.progress,
            leave=False,
        )
        total = 0.0
        for step in bar:
            index = order[step * config.batch_size : (step + 1) * config.batch_size]
            images, maps = augment(train_x[index], train_maps[index], generator)
            features = model.forward_features(normalise(images, member.mean, member.std))
            logits = model.forward_head(features)
            target = train_y[index]
            if member.num_classes == 1:
                loss = loss_fn(logits[:, 0], target)
            else:
                loss = nn.functional.cross_entropy(logits, target.long())
            if config.lesion_map_weight > 0:
                loss = loss + config.lesion_map_weight * lesion_head.loss(features, maps)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            # from-scratch mobile heads (no norm after conv_head) spike early without this
            nn.utils.clip_grad_norm_(
                [*model.parameters(), *lesion_head.parameters()], config.max_grad_norm
            )
            optimizer.step()
            scheduler.step()
            total += loss.item()
            bar.set_postfix(loss=f"{total / (step + 1):.3f}")
        val_prob = predict(model, val_x, member)
        auc = roc_auc(val.labels, val_prob) if 0 < val.labels.sum() < len(val) else 0.5
        if config.progress:
            print(
                f"  {member.name} epoch {epoch + 1}: train loss {total / steps_per_epoch:.3f}, "
                f"val AUROC {auc:.3f}",
                flush=True,
            )
        if auc >= best_auc:
            best_auc = auc
            save_original_format(
                best_path,
                model,
                optimizer,
                epoch,
                val_auroc=auc,
                arch=member.arch,
                input_size=member.input_size,
            )
        save_original_format(
            last_path,
            model,
            optimizer,
            epoch,
            best_auc=best_auc,
            scheduler_state_dict=scheduler.state_dict(),
            lesion_head_state_dict=lesion_head.state_dict(),
        )
    best = build_model(member.arch, member.num_classes)
    best.load_state_dict(torch.load(best_path, map_location="cpu")["model_state_dict"])
    return predict(best, val_x, member)


def choose_weights(val_probs: np.ndarray, labels: np.ndarray, step: float = 0.05) -> np.ndarray:
    """Simplex grid search for the weights with the best validation AUROC.

    Ties go to the most even weighting, so a member is only down-weighted for a reason.
    """
    m = val_probs.shape[1]
    ticks = int(round(1 / step))
    best: tuple[float, float, np.ndarray] | None = None
    for combo in itertools.product(range(ticks + 1), repeat=m - 1):
        if sum(combo) > ticks:
            continue
        weights = np.array([*combo, ticks - sum(combo)], dtype=np.float64) / ticks
        if weights.max() == 1.0 and m > 1:
            continue  # keep every member in the vote
        auc = roc_auc(labels, val_probs @ weights)
        evenness = -float(np.abs(weights - 1 / m).sum())
        if best is None or (round(auc, 6), evenness) > (round(best[0], 6), best[1]):
            best = (auc, evenness, weights)
    return best[2] if best is not None else np.full(m, 1 / m)


def train_classifier(
    members: list[MemberSpec],
    bundle_dir: Path,
    train: LabelledImages,
    val: LabelledImages,
    config: ClassifierTrainConfig,
    on_epoch_start: Callable[[], None] | None = None,
) -> ClassifierSpec:
    """Train every member, choose weights + threshold on val, update the manifest."""
    columns = [
        train_member(member, bundle_dir, train, val, config, on_epoch_start) for member in members
    ]
    val_probs = np.stack(columns, axis=1)
    weights = choose_weights(val_probs, val.labels) if len(members) > 1 else np.ones(1)
    scores = val_probs @ weights
    threshold = float(youden_threshold(val.labels, scores))
    spec = ClassifierSpec(
        members=[
            m.model_copy(update={"weight": max(float(w), 1e-6)})
            for m, w in zip(members, weights, strict=True)
        ],
        threshold=round(min(max(threshold, 0.0), 1.0), 6),
    )
    write_manifest_section(bundle_dir, "classifier", spec.model_dump(mode="json"))
    if config.progress:
        chosen = {m.name: round(float(w), 3) for m, w in zip(members, weights, strict=True)}
        print(
            f"  ensemble weights {chosen}, "
            f"threshold {spec.threshold:.3f}, val AUROC {roc_auc(val.labels, scores):.3f}",
            flush=True,
        )
    return spec


def write_manifest_section(bundle_dir: Path, key: str, value: object) -> None:
    """Merge one top-level section into the bundle's manifest.yaml."""
    path = manifest_path(bundle_dir) or bundle_dir / "manifest.yaml"
    data = yaml.safe_load(path.read_text()) if path.is_file() else {}
    data = data or {}
    data[key] = value
    path.write_text(yaml.safe_dump(data, sort_keys=False))
