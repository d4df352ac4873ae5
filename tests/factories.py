"""Builders for test inputs: DICOM files and model bundles, made in the test run.

Nothing here is committed as a binary: every file is generated, deterministically.
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import numpy as np
import torch
import yaml
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from bench.dicoms import radiograph_pixels
from training.dicom_writer import DX_FOR_PRESENTATION, SECONDARY_CAPTURE, file_bytes, xray_dataset

__all__ = ["TouchMarker", "make_dicom", "radiograph_pixels", "write_tiny_bundle"]


class TouchMarker:
    """A hostile pickle payload: unpickling it in full runs ``touch MARKER`` (``os.system``).

    Saved with ``torch.save`` inside a checkpoint, it proves a loader never executes a
    bundle: the marker file must never appear.
    """

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


def make_dicom(
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    transfer_syntax: str = ExplicitVRLittleEndian,
    patient_id: str = "TEST-PATIENT-0001",
    patient_name: str = "Test^Patient",
    modality: str = "DX",
    body_part: str | None = "LSPINE",
    extra: dict[str, object] | None = None,
) -> bytes:
    """A valid single-frame grey DICOM (Part 10 file) as bytes: a lumbar spine DX by default.

    ``body_part`` is BodyPartExamined (None leaves it out); a modality other than DX
    makes a Secondary Capture.
    """
    attributes: dict[str, object] = {
        "StudyInstanceUID": generate_uid(entropy_srcs=[patient_id, "study"]),
        "SeriesInstanceUID": generate_uid(entropy_srcs=[patient_id, "series"]),
        "PatientID": patient_id,
        "PatientName": patient_name,
        "PatientBirthDate": "19700101",
        "StudyDate": datetime.date(2026, 1, 28).strftime("%Y%m%d"),
        "Modality": modality,
        **({"BodyPartExamined": body_part} if body_part else {}),
        **(extra or {}),
    }
    return file_bytes(xray_dataset(
        pixels,
        sop_instance_uid=generate_uid(entropy_srcs=[patient_id, str(pixels.shape)]),
        attributes=attributes,
        photometric=photometric,
        bits_stored=bits_stored,
        transfer_syntax=transfer_syntax,
        sop_class_uid=DX_FOR_PRESENTATION if modality == "DX" else SECONDARY_CAPTURE,
    ))


def write_tiny_bundle(root: Path, *, detector_always_fires: bool = True) -> Path:
    """Original folder layout with small timm archs (fast on CPU) and a YOLO11n.

    ``detector_always_fires`` raises the class-2 bias of the YOLO head so a random
    network still outputs boxes (with image-dependent, distinct confidences around 0.6):
    the tests need boxes to check coordinate mapping.
    """
    import timm

    from training.untrained_bundle import (
        VINDR_CLASSES,
        save_classifier_checkpoint,
        save_yolo_checkpoint,
    )

    members = [
        ("densenet121", "resnet10t", "ensemble output/densenet121_balanced/model_best.pth", 0.42, 96),
        ("resnet50", "mobilenetv3_small_050", "ensemble output/resnet50_optimized/model_best.pth", 0.26, 64),
        ("efficientnetv2", "lcnet_050", "ensemble output/tf_efficientnetv2_s_optimized/model_best.pth", 0.32, 96),
    ]
    torch.manual_seed(1)
    for _name, arch, checkpoint, _weight, _size in members:
        save_classifier_checkpoint(
            timm.create_model(arch, pretrained=False, num_classes=1), root / checkpoint
        )
    yolo_path = root / "detection output/yolo11/weights/best.pt"
    save_yolo_checkpoint("yolo11n.yaml", yolo_path, VINDR_CLASSES)
    if detector_always_fires:
        make_detector_fire(yolo_path)
    manifest = {
        "name": "tiny-test-bundle",
        "kind": "user",
        "classifier": {
            "threshold": 0.449,
            "members": [
                {"name": n, "arch": a, "checkpoint": c, "weight": w, "input_size": s}
                for n, a, c, w, s in members
            ],
        },
        "detector": {"max_det": 20, "conf": 0.25, "iou": 0.5},
    }
    (root / "manifest.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    return root


def make_detector_fire(path: Path, class_logit: float = 0.5, spread: float = 30.0) -> None:
    """Give the random YOLO image-dependent, distinct confidences of class 2 around
    ``sigmoid(class_logit)`` (every other class silenced; ``spread`` scales the class
    logit's dependence on the image, so neighbouring boxes differ clearly).

    Its random features vanish with depth, so every anchor would score the same (the
    class bias): NMS then keeps whichever equal boxes its sort happens to put first, and
    the order of ties is unspecified. With BatchNorm statistics taken from phantoms
    (damped, so the random net stays well conditioned) the scores differ per box, and
    comparisons compare detections, not tie-breaking.
    """
    os.environ.setdefault("YOLO_OFFLINE", "1")
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    model = checkpoint["model"].float()
    batch = torch.stack([
        torch.from_numpy(radiograph_pixels(640, 640, bits=8, seed=seed).astype(np.float32) / 255)
        for seed in (1, 2, 3, 4)
    ])[:, None].expand(-1, 3, -1, -1).contiguous()
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for norm in norms:
        norm.momentum = 1.0
    model.train()
    with torch.no_grad():
        model(batch)
        model.eval()
        for norm in norms:
            norm.weight.mul_(0.8)
        for branch in model.model[-1].cv3:  # per-scale class branches; bias = the logit
            branch[-1].bias[:] = -10.0
            branch[-1].bias[2] = class_logit  # class 2 "Disc space narrowing"
            branch[-1].weight[2].mul_(spread)
    checkpoint["model"], checkpoint["ema"] = model.half(), None
    torch.save(checkpoint, path)


TINY_TIMM_ARCH = "resnet10t"


def tiny_timm_classifier(seed: int = 0) -> torch.nn.Module:
    """A small random timm classifier (one logit) for checkpoint-loading tests."""
    import timm

    torch.manual_seed(seed)
    return timm.create_model(TINY_TIMM_ARCH, pretrained=False, num_classes=1).eval()


def same_output(a: torch.nn.Module, b: torch.nn.Module, atol: float = 1e-4) -> bool:
    """Whether two classifiers give the same logits on one fixed random image."""
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return torch.allclose(a(x), b(x), atol=atol)
