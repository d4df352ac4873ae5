"""YOLO on the model's device: letterbox in, NMS out, boxes back in canonical pixels.

The letterbox reproduces Ultralytics' own (ratio-preserving resize with bilinear
interpolation, centred padding of grey 114, the same rounding), so a checkpoint trained
with Ultralytics sees the same input here; but it runs batched on the device instead of
per image in numpy. Ultralytics is imported lazily and never allowed to download.
Checkpoints load as data (:mod:`model_server.safe_load`, the Ultralytics allow-list),
never through Ultralytics' own loader, which unpickles in full.
This is the torch path (CUDA, or ``MODEL_BACKEND=torch``) and the reference the
detector's ONNX graph (:mod:`detector_service.graph`) is checked against at export; the
graph holds the network as :class:`RawOutput` (one tensor out, the decoded
``[N, 4 + classes, anchors]`` predictions that NMS reads).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from detector_service.letterbox import Letterbox, letterbox_geometry, letterbox_shape
from model_server.safe_load import (
    ULTRALYTICS,
    UnreadableCheckpointError,
    load_checkpoint_file,
)
from shared.bundle import DetectorSpec
from shared.paths import keep_ultralytics_offline

PAD_VALUE = 114 / 255.0
NO_TIME_LIMIT = 1e9  # seconds per image: Ultralytics' NMS time limit, never reached


class DetectorLoadError(RuntimeError):
    """A detector checkpoint or YAML that cannot be served; the message names the file."""


def letterbox_batch(
    images: list[np.ndarray], size: int, device: torch.device, stride: int | None = None
) -> tuple[torch.Tensor, list[Letterbox]]:
    """uint8 ``(H, W)`` images -> float ``[N,3,h,w]`` in [0,1] on ``device``: the
    ``size`` square, or with ``stride`` the minimal rectangle (every image of one call must
    then have the same rectangle: :func:`group_by_input_shape`)."""
    boxes = [letterbox_geometry(image.shape[0], image.shape[1], size, stride) for image in images]
    shapes = {(g.input_height, g.input_width) for g in boxes}
    if len(shapes) != 1:
        raise ValueError(f"images of one batch need one input shape, got {sorted(shapes)}")
    ((height, width),) = shapes
    batch = torch.full((len(images), 1, height, width), PAD_VALUE, device=device)
    for index, (image, geometry) in enumerate(zip(images, boxes, strict=True)):
        tensor = torch.from_numpy(image).to(device, non_blocking=True).float().div_(255.0)
        resized = F.interpolate(
            tensor[None, None],
            size=(geometry.new_height, geometry.new_width),
            mode="bilinear",
            align_corners=False,
        )
        batch[
            index,
            :,
            geometry.top : geometry.top + geometry.new_height,
            geometry.left : geometry.left + geometry.new_width,
        ] = resized[0]
    return batch.expand(-1, 3, -1, -1).contiguous(), boxes


def group_by_input_shape(
    images: list[np.ndarray], size: int, stride: int | None
) -> list[list[int]]:
    """Indices of ``images`` grouped by their letterbox input shape (one group per shape,
    in first-seen order): each group is one network call."""
    groups: dict[tuple[int, int], list[int]] = {}
    for index, image in enumerate(images):
        shape = letterbox_shape(image.shape[0], image.shape[1], size, stride)
        groups.setdefault(shape, []).append(index)
    return list(groups.values())


def unletterbox_boxes(
    boxes_xyxy: np.ndarray, geometry: Letterbox, height: int, width: int
) -> np.ndarray:
    """Boxes in letterboxed input pixels -> the source image's pixels, clipped to it."""
    out = boxes_xyxy.astype(np.float64).copy()
    out[:, [0, 2]] = (out[:, [0, 2]] - geometry.left) / geometry.gain
    out[:, [1, 3]] = (out[:, [1, 3]] - geometry.top) / geometry.gain
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, width)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, height)
    return out


def load_yolo(
    path: Path, num_classes: int | None = None, *, trusted: bool = False
) -> tuple[nn.Module, dict[int, str]]:
    """An Ultralytics ``.pt`` (class names from the checkpoint) or a YOLO ``.yaml``.

    A ``.pt`` is read with ``weights_only=True`` and the Ultralytics allow-list, then
    made ready the way Ultralytics' ``load_checkpoint`` does (EMA preferred, FP32, the
    default args attached, ``inplace`` set). ``trusted``: the manifest's
    ``allow_unsafe_pickle_sha256`` names this exact file.
    """
    keep_ultralytics_offline()
    from ultralytics.nn.tasks import DetectionModel

    if path.suffix in (".yaml", ".yml"):
        try:
            model = DetectionModel(cfg=str(path), nc=num_classes, verbose=False)
        except Exception as exc:  # noqa: BLE001 - any parse error means the same thing
            raise DetectorLoadError(f"{path}: not a usable YOLO yaml: {exc}") from exc
    else:
        if not path.is_file():
            raise DetectorLoadError(f"detector checkpoint {path} not found")
        try:
            checkpoint = load_checkpoint_file(path, ULTRALYTICS, trusted=trusted)
        except UnreadableCheckpointError as exc:
            raise DetectorLoadError(str(exc)) from exc
        model = network_from_checkpoint(checkpoint, path)
    names = getattr(model, "names", None)
    if isinstance(names, list):
        names = dict(enumerate(names))
    if not isinstance(names, dict) or not names:
        raise DetectorLoadError(f"{path}: the checkpoint carries no class names")
    return model.eval(), {int(key): str(value) for key, value in names.items()}


def network_from_checkpoint(checkpoint: object, path: Path) -> nn.Module:
    """The detection network inside an unpickled Ultralytics (or converted) checkpoint."""
    from ultralytics.cfg import DEFAULT_CFG_DICT
    from ultralytics.nn.tasks import DetectionModel, guess_model_task

    if not isinstance(checkpoint, dict):
        raise DetectorLoadError(f"{path}: not an Ultralytics checkpoint (a {type(checkpoint)})")
    if "ultralytics_yaml" in checkpoint:  # written by `spine convert-checkpoint`
        names = checkpoint.get("names") or {}
        try:
            model = DetectionModel(
                cfg=dict(checkpoint["ultralytics_yaml"]), nc=len(names) or None, verbose=False
            )
            model.load_state_dict(checkpoint["model_state_dict"], strict=True)
        except Exception as exc:  # noqa: BLE001
            raise DetectorLoadError(f"{path}: converted checkpoint does not load: {exc}") from exc
        model.names = {int(k): str(v) for k, v in names.items()}
        return model.float().eval()
    candidate = checkpoint.get("ema") or checkpoint.get("model")
    if not isinstance(candidate, nn.Module):
        raise DetectorLoadError(f"{path}: the checkpoint holds no Ultralytics model")
    if checkpoint.get("modelopt"):
        raise DetectorLoadError(f"{path}: quantization-aware (QAT) checkpoints are not served")
    model = candidate.float()
    model.args = {**DEFAULT_CFG_DICT, **(checkpoint.get("train_args") or {})}
    model.pt_path = str(path)
    model.task = getattr(model, "task", guess_model_task(model))
    if not hasattr(model, "stride"):
        model.stride = torch.tensor([32.0])
    for module in model.modules():
        if hasattr(module, "inplace"):
            module.inplace = True
        elif isinstance(module, nn.Upsample) and not hasattr(module, "recompute_scale_factor"):
            module.recompute_scale_factor = None
    return model.eval()


class RawOutput(nn.Module):
    """The network's decoded predictions only (eval mode returns ``(y, features)``)."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        out = self.network(batch)
        return out[0] if isinstance(out, tuple | list) else out


def reset_anchor_cache(network: nn.Module) -> None:
    """Detect heads cache anchors per input shape; tensors made under inference_mode
    cannot enter an export trace, so drop the cache before exporting."""
    for module in network.modules():
        if hasattr(module, "anchors") and hasattr(module, "shape"):
            module.shape = None


def postprocess(
    raw: torch.Tensor | tuple | list,
    *,
    conf: float,
    iou: float,
    max_det: int,
    end2end: bool,
) -> list[torch.Tensor]:
    """Ultralytics' NMS: per image a ``[K, 6]`` tensor (x1, y1, x2, y2, score, class).

    Without its time limit: past ``2 + 0.05 * batch`` seconds (a loaded CPU, thousands of
    candidates) Ultralytics stops and leaves the batch's remaining images with no boxes,
    silently; here every image is finished, as the ONNX graph does."""
    import torchvision  # noqa: F401 - once imported, Ultralytics uses its C++ NMS
    from ultralytics.utils.nms import non_max_suppression

    return non_max_suppression(raw, conf, iou, max_det=max_det, end2end=end2end,
                               max_time_img=NO_TIME_LIMIT)


def detect(
    images: list[np.ndarray],
    forward: Callable[[torch.Tensor], torch.Tensor | tuple | list],
    *,
    spec: DetectorSpec,
    stride: int | None,
    device: torch.device,
    end2end: bool,
) -> list[dict[str, np.ndarray]]:
    """The torch path: letterbox (one call per input shape), ``forward``, Ultralytics'
    NMS, boxes back in each image's pixels: per image ``boxes``, ``scores``, ``classes``."""
    results: list[dict[str, np.ndarray]] = [{} for _ in images]
    for group in group_by_input_shape(images, spec.image_size, stride):
        members = [images[index] for index in group]
        batch, geometries = letterbox_batch(members, spec.image_size, device, stride)
        detections = postprocess(
            forward(batch), conf=spec.conf, iou=spec.iou, max_det=spec.max_det, end2end=end2end
        )
        for index, image, geometry, found in zip(
            group, members, geometries, detections, strict=True
        ):
            found = found.float().cpu().numpy()
            boxes = unletterbox_boxes(found[:, :4], geometry, image.shape[0], image.shape[1])
            results[index] = {
                "boxes": boxes.astype(np.float32),
                "scores": found[:, 4].astype(np.float32),
                "classes": found[:, 5].astype(np.int32),
            }
    return results
