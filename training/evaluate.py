"""``spine evaluate``: run a labelled set through the service and report the paper's metrics.

Two ways to get predictions: through a running gateway (``--gateway URL``: exactly what
users get, detections after the gateway's fusion rule) or in-process from a bundle
folder (``--model-dir``: the same decoder and model classes, raw detector boxes). Either
way the report holds AUROC with a bootstrap CI, F1/sensitivity/specificity at the
bundle's threshold and at the Youden threshold, per-member AUROC, COCO mAP50 and
mAP50-95 with per-class AP50, plus ROC/PR figures and a markdown summary.

With ``dicom_out`` (``--dicom-out DIR``) every image also gets its DICOM results in that
folder (``<image_id>.sr.dcm``, ``<image_id>.gsps.dcm``): through a gateway they are what
``POST /upload/dicom`` answers (its JSON part is the prediction: no second inference);
in-process they come from the same writer, :mod:`shared.dicom.results` (training may not
import the gateway), fed with the raw predictions.
"""

from __future__ import annotations

import asyncio
import csv
import email.parser
import email.policy
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shared.geometry import canonical_to_original
from shared.settings import ModelServerSettings
from training.datasets import CLASS_NAMES, ImageRecord, choose_split, load_vindr
from training.metrics import (
    binary_metrics_at,
    bootstrap_auc_ci,
    bootstrap_map50_ci,
    coco_map,
    detection_pr_curves,
    roc_auc,
    youden_threshold,
)


@dataclass
class Prediction:
    image_id: str
    abnormal_probability: float
    members: dict[str, float]
    detections: list[tuple[str, float, tuple[float, float, float, float]]] = field(
        default_factory=list
    )


@dataclass
class PredictionSet:
    threshold: float
    bundle: str
    demo: bool
    items: list[Prediction]


def split_dicom_answer(content_type: str, body: bytes) -> dict[str, bytes]:
    """A ``/upload/dicom`` multipart/related answer -> {Content-ID: part bytes}."""
    head = f"Content-Type: {content_type}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not message.is_multipart():
        raise ValueError("the answer is not multipart")
    return {
        str(part["Content-ID"]).strip("<>"): part.get_payload(decode=True)
        for part in message.iter_parts()
    }


def _write_dicom_parts(out: Path, image_id: str, parts: dict[str, bytes]) -> None:
    for name in ("sr", "gsps"):
        if parts.get(name) is not None:
            (out / f"{image_id}.{name}.dcm").write_bytes(parts[name])


async def _predict_via_gateway(
    records: list[ImageRecord], gateway: str, concurrency: int, progress: bool,
    dicom_out: Path | None = None,
) -> PredictionSet:
    import httpx
    from tqdm import tqdm

    semaphore = asyncio.Semaphore(concurrency)
    bar = tqdm(total=len(records), desc="evaluate", unit="img", disable=not progress)
    meta: dict[str, Any] = {}

    async def one(client: httpx.AsyncClient, record: ImageRecord) -> Prediction:
        route, params = ("/upload/dicom", {}) if dicom_out else ("/upload", {"annotate": "false"})
        async with semaphore:
            response = await client.post(
                f"{gateway.rstrip('/')}{route}",
                params=params,
                files={"file": (record.path.name, record.path.read_bytes(), "application/dicom")},
            )
        bar.update()
        if response.status_code == 200 and dicom_out is not None:
            parts = split_dicom_answer(response.headers["content-type"], response.content)
            _write_dicom_parts(dicom_out, record.image_id, parts)
            body = json.loads(parts["analysis"])
        else:
            body = response.json()
        if response.status_code != 200:
            raise RuntimeError(
                f"{record.image_id}: HTTP {response.status_code}: {body.get('message')}"
            )
        if body["detections"] is None:  # the detector was down: no boxes is not "no lesions"
            raise RuntimeError(f"{record.image_id}: no detector answer: {body['warnings']}")
        meta.update(
            threshold=body["threshold"], bundle=body["model_bundle"]["name"], demo=body["demo"]
        )
        return Prediction(
            record.image_id,
            body["abnormal_probability"],
            body["ensemble_prediction"],
            [(d["class"], d["confidence"], tuple(d["bbox"])) for d in body["detections"]],
        )

    async with httpx.AsyncClient(timeout=300) as client:
        items = await asyncio.gather(*(one(client, r) for r in records))
    bar.close()
    return PredictionSet(meta["threshold"], meta["bundle"], meta["demo"], list(items))


def _predict_in_process(
    records: list[ImageRecord], model_dir: Path, settings: ModelServerSettings, progress: bool,
    dicom_out: Path | None = None,
) -> PredictionSet:
    from tqdm import tqdm

    from classifier_service.model import ClassifierModel
    from detector_service.model import DetectorModel
    from shared.dicom import decode_dicom

    classifier = ClassifierModel(model_dir, "auto", settings=settings)
    detector = DetectorModel(model_dir, "auto", settings=settings)
    classifier.load()
    detector.load()
    # the member_probabilities columns, in the manifest's order (torch path or ONNX graph)
    names = [member.name for member in classifier.manifest.classifier.members]
    items = []
    for record in tqdm(records, desc="evaluate", unit="img", disable=not progress):
        canonical, metadata = decode_dicom(record.path.read_bytes())
        scored = classifier.predict_batch([canonical.pixels])[0]
        found = detector.predict_batch([canonical.pixels])[0]
        detections = []
        for box, score, cls in zip(found["boxes"], found["scores"], found["classes"], strict=True):
            x1, y1, x2, y2 = (float(v) for v in box)
            detections.append(
                (
                    detector.class_names.get(int(cls), str(int(cls))),
                    float(score),
                    canonical_to_original(
                        (x1, y1, x2, y2),
                        canonical.scale_x,
                        canonical.scale_y,
                        canonical.original_columns,
                        canonical.original_rows,
                    ),
                )
            )
        prediction = Prediction(
            record.image_id,
            float(scored["abnormal_probability"][0]),
            dict(zip(names, (float(p) for p in scored["member_probabilities"]), strict=True)),
            detections,
        )
        items.append(prediction)
        if dicom_out is not None and metadata.source is not None:
            _write_in_process_results(dicom_out, prediction, metadata.source, classifier, detector)
    return PredictionSet(
        classifier.manifest.classifier.threshold,
        classifier.manifest.name,
        classifier.manifest.kind.value != "user",
        items,
    )


def _write_in_process_results(
    out: Path, prediction: Prediction, source: Any, classifier: Any, detector: Any
) -> None:
    """SR + GSPS of one in-process prediction (raw detector boxes: no fusion rule)."""
    from shared.dicom.results import AnalysisResult, ResultBox, write_results

    facts = classifier.facts()
    checkpoints = {**facts.checkpoints, **detector.facts().checkpoints}
    abnormal = prediction.abnormal_probability > facts.threshold
    result = AnalysisResult(
        diagnosis="Abnormal" if abnormal else "Normal",
        abnormal_probability=prediction.abnormal_probability,
        threshold=facts.threshold,
        members=prediction.members,
        boxes=tuple(
            ResultBox(name, score, tuple(round(v, 1) for v in box))  # type: ignore[arg-type]
            for name, score, box in prediction.detections
        ),
        bundle_name=facts.name,
        bundle_kind=facts.kind.value,
        checkpoints=checkpoints,
        fusion_mode="none (in-process evaluation: raw detector boxes)",
    )
    written = write_results(source, result)
    _write_dicom_parts(out, prediction.image_id, {"sr": written.sr, "gsps": written.gsps})


def _write_csvs(out: Path, predictions: PredictionSet) -> None:
    members = list(predictions.items[0].members) if predictions.items else []
    with (out / "predictions.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image_id", "abnormal_probability", *members])
        for item in predictions.items:
            writer.writerow(
                [
                    item.image_id,
                    f"{item.abnormal_probability:.6f}",
                    *(f"{item.members[m]:.6f}" for m in members),
                ]
            )
    with (out / "detections.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image_id", "class", "confidence", "xmin", "ymin", "xmax", "ymax"])
        for item in predictions.items:
            for cls, score, box in item.detections:
                writer.writerow([item.image_id, cls, f"{score:.6f}", *(f"{v:.1f}" for v in box)])


def compute_report(records: list[ImageRecord], predictions: PredictionSet) -> dict[str, Any]:
    by_id = {item.image_id: item for item in predictions.items}
    labels = np.array([r.is_abnormal for r in records], dtype=bool)
    scores = np.array([by_id[r.image_id].abnormal_probability for r in records])
    youden = float(youden_threshold(labels, scores))
    low, high = bootstrap_auc_ci(labels, scores)
    members = list(predictions.items[0].members) if predictions.items else []
    gt = {
        r.image_id: [(b.lesion_type, b.xyxy) for b in r.boxes if b.lesion_type in CLASS_NAMES]
        for r in records
    }
    preds = {
        r.image_id: [(c, s, b) for c, s, b in by_id[r.image_id].detections if c in CLASS_NAMES]
        for r in records
    }
    detection = coco_map(gt, preds, CLASS_NAMES)
    map50_ci = list(bootstrap_map50_ci(gt, preds, CLASS_NAMES)) if any(gt.values()) else None
    return {
        "bundle": predictions.bundle,
        "demo": predictions.demo,
        "images": len(records),
        "abnormal": int(labels.sum()),
        "auroc": roc_auc(labels, scores),
        "auroc_ci95": [low, high],
        "at_bundle_threshold": {
            "threshold": predictions.threshold,
            **binary_metrics_at(labels, scores, predictions.threshold),
        },
        "at_youden_threshold": {"threshold": youden, **binary_metrics_at(labels, scores, youden)},
        "member_auroc": {
            m: roc_auc(labels, np.array([by_id[r.image_id].members[m] for r in records]))
            for m in members
        },
        "map50": detection["map50"],
        "map50_ci95": map50_ci,
        "map50_95": detection["map50_95"],
        "per_class_ap50": detection["per_class_ap50"],
        "per_class_ground_truth": detection["n_gt"],
        "_curves": {
            "labels": labels,
            "scores": scores,
            "gt": gt,
            "preds": preds,
            "members": {
                m: np.array([by_id[r.image_id].members[m] for r in records]) for m in members
            },
        },
    }


def _ci(interval: list[float] | None, pct: Any) -> str:
    return "" if interval is None else f" (95% CI {pct(interval[0])}-{pct(interval[1])})"


def _markdown(report: dict[str, Any]) -> str:
    def pct(value: float | None) -> str:
        return "n/a" if value is None or value != value else f"{100 * value:.2f}%"

    lines = [
        f"# Evaluation of bundle `{report['bundle']}`",
        "",
        "**DEMO / synthetic bundle: not a medical model.**" if report["demo"] else "",
        f"{report['images']} images, {report['abnormal']} abnormal.",
        "",
        "| metric | value |",
        "|---|---|",
        f"| AUROC | {pct(report['auroc'])} "
        f"(95% CI {pct(report['auroc_ci95'][0])}-{pct(report['auroc_ci95'][1])}) |",
    ]
    for key, label in (
        ("at_bundle_threshold", "bundle threshold"),
        ("at_youden_threshold", "Youden threshold"),
    ):
        block = report[key]
        lines.append(
            f"| at {label} {block['threshold']:.3f} | F1 {pct(block['f1'])}, sensitivity "
            f"{pct(block['sensitivity'])}, specificity {pct(block['specificity'])} |"
        )
    lines += [
        f"| mAP50 | {pct(report['map50'])}{_ci(report['map50_ci95'], pct)} |",
        f"| mAP50-95 | {pct(report['map50_95'])} |",
        "",
    ]
    lines += ["| member | AUROC |", "|---|---|"]
    lines += [f"| {m} | {pct(v)} |" for m, v in report["member_auroc"].items()]
    lines += ["", "| class | AP50 | ground-truth boxes |", "|---|---|---|"]
    lines += [
        f"| {c} | {pct(v)} | {report['per_class_ground_truth'][c]} |"
        for c, v in report["per_class_ap50"].items()
    ]
    lines += ["", "![ROC](roc.png) ![PR](pr.png) ![Detection PR](detection_pr.png)", ""]
    return "\n".join(line for line in lines if line is not None)


def evaluate(
    data_dir: Path,
    out: Path,
    *,
    split: str | None = None,
    gateway: str | None = None,
    model_dir: Path | None = None,
    model_settings: ModelServerSettings | None = None,
    concurrency: int = 4,
    progress: bool = True,
    dicom_out: Path | None = None,
) -> dict[str, Any]:
    """Predict every image of ``split``, write the CSVs, report.json, figures and report.md.

    ``model_dir`` runs the models in this process, configured by ``model_settings`` (the
    caller's entry point read them; required then). ``dicom_out``: also write each image's
    SR and presentation state there.

    Without ``split``: ``test`` if present, else the only split of ``data_dir``
    (:func:`training.datasets.choose_split`).
    """
    from training.plots import save_detection_pr_png, save_pr_png, save_roc_png

    if (gateway is None) == (model_dir is None):
        raise ValueError("give exactly one of gateway or model_dir")
    if model_dir is not None and model_settings is None:
        raise ValueError("model_dir needs model_settings (how the models run in-process)")
    records = load_vindr(data_dir, choose_split(data_dir, split))
    if dicom_out is not None:
        dicom_out.mkdir(parents=True, exist_ok=True)
    if gateway is not None:
        predictions = asyncio.run(
            _predict_via_gateway(records, gateway, concurrency, progress, dicom_out)
        )
    else:
        predictions = _predict_in_process(
            records, model_dir, model_settings, progress, dicom_out  # type: ignore[arg-type]
        )
    out.mkdir(parents=True, exist_ok=True)
    _write_csvs(out, predictions)
    report = compute_report(records, predictions)
    curves = report.pop("_curves")
    save_roc_png(
        out / "roc.png",
        curves["labels"],
        {"ensemble": curves["scores"], **curves["members"]},
        {
            "bundle threshold": predictions.threshold,
            "Youden": report["at_youden_threshold"]["threshold"],
        },
    )
    save_pr_png(
        out / "pr.png", curves["labels"], {"ensemble": curves["scores"], **curves["members"]}
    )
    save_detection_pr_png(
        out / "detection_pr.png",
        detection_pr_curves(curves["gt"], curves["preds"], CLASS_NAMES),
        report["per_class_ap50"],
    )
    (out / "report.json").write_text(json.dumps(report, indent=2, default=_json_default))
    (out / "report.md").write_text(_markdown(report))
    return report


def _json_default(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Iterable):
        return list(value)  # type: ignore[arg-type]
    raise TypeError(type(value).__name__)
