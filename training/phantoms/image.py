"""Image synthesis: coverage masks -> attenuation -> a blurred, noisy 12-bit radiograph.

The lesion-independent detail (soft tissue, bowel gas, iliac rim, side marker,
bone texture, quantum noise) is drawn here from the spec's own seeds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np
from numpy.typing import NDArray

from training.datasets import Box
from training.phantoms.geometry import Mask
from training.phantoms.lesions import lesion_boxes, rasterize
from training.phantoms.spec import AP, LATERAL, MAX_VALUE, PhantomSpec, sample_phantom


def _layer_densities(spec: PhantomSpec) -> dict[str, float]:
    bone = spec.bone_density
    return {
        "bone": bone,
        "cortex": spec.cortex_density,
        "posterior": bone * (0.5 if spec.view == LATERAL else 0.4),
        "dense": bone * 0.75,
        "lytic": -bone * 0.9,
        "metal": 4.0,
    }


def _background(spec: PhantomSpec) -> NDArray[np.float32]:
    """Smooth soft-tissue attenuation: body-thickness profile, slow texture, bowel gas.

    Built at 1/8 size and scaled up once: none of it has fine detail.
    """
    rng = np.random.default_rng(spec.noise_seed + 1)
    small_r, small_c = max(8, spec.rows // 8), max(8, spec.cols // 8)
    x = (np.arange(small_c, dtype=np.float32) + 0.5) * (spec.cols / small_c)
    y = (np.arange(small_r, dtype=np.float32) + 0.5) * (spec.rows / small_r)
    profile = np.sqrt(np.clip(1 - ((x - spec.soft_center) / spec.soft_radius) ** 2, 0, 1))
    vertical = 1 + 0.12 * (y / spec.rows - 0.5) * (1 if spec.extras[0] < 0.5 else -1)
    tissue = vertical[:, None] * profile[None, :]
    coarse = rng.standard_normal((6, 5), np.float32)
    tissue *= 1 + 0.08 * cv2.resize(coarse, (small_c, small_r), interpolation=cv2.INTER_CUBIC)
    # Bowel gas: a few faint, soft-edged darker pockets in front of the spine.
    gas = np.zeros((small_r, small_c), np.float32)
    for g in range(3):
        gx = spec.soft_center + spec.facing * spec.cols * (0.12 + 0.2 * spec.extras[3 + g])
        gy = spec.rows * (0.2 + 0.6 * spec.extras[6 + g])
        centre = (int(gx * small_c / spec.cols), int(gy * small_r / spec.rows))
        axes = (max(1, small_c // 20), max(1, small_r // 50))
        cv2.ellipse(gas, centre, axes, 360 * spec.extras[9 + g], 0, 360, 1.0, -1, cv2.LINE_AA)
    tissue -= 0.12 * cv2.GaussianBlur(gas, (0, 0), 1.5)
    return cv2.resize(
        (tissue * spec.soft_density).astype(np.float32),
        (spec.cols, spec.rows),
        interpolation=cv2.INTER_LINEAR,
    )


_OVERLAY_RIM = 24  # coverage level of the iliac rim in the overlay (the marker is 255)


def _overlay(spec: PhantomSpec) -> Mask:
    """Lesion-independent sharp detail: iliac crest rim(s) and a burned-in side marker."""
    canvas = np.zeros((spec.rows, spec.cols), np.uint8)
    last = spec.vertebrae[-1]
    axes = (int(spec.cols * (0.22 + 0.1 * spec.extras[1])), int(spec.rows * 0.18))
    sides = (-1, 1) if spec.view == AP else (-spec.facing,)
    for side in sides:
        centre = (
            int(last.cx + side * last.width * (1.6 if spec.view == AP else 0.4)),
            int(last.cy + last.h_back * (0.9 + spec.extras[2])),
        )
        thickness = max(6, spec.cols // 90)
        cv2.ellipse(canvas, centre, axes, 0, 180, 360, _OVERLAY_RIM, thickness, cv2.LINE_AA)
    if spec.marker:
        scale = spec.rows / 700
        org = (int(spec.cols * (0.06 if spec.extras[12] < 0.5 else 0.86)), int(spec.rows * 0.08))
        cv2.putText(
            canvas,
            spec.marker,
            org,
            cv2.FONT_HERSHEY_SIMPLEX,
            scale,
            255,
            max(2, int(scale * 2.5)),
            cv2.LINE_AA,
        )
    return canvas


def _trabecular(spec: PhantomSpec) -> NDArray[np.float32]:
    """Multiplicative bone texture around 1 (+-10%), smooth at a few pixels."""
    rng = np.random.default_rng(spec.noise_seed + 2)
    small = rng.standard_normal((spec.rows // 6, spec.cols // 6), np.float32)
    small = cv2.GaussianBlur(small, (0, 0), 1.2)
    small *= 0.1 / (small.std() + 1e-6)
    small += 1.0
    return cv2.resize(small, (spec.cols, spec.rows), interpolation=cv2.INTER_LINEAR)


def _pixel_noise(seed: int, shape: tuple[int, ...]) -> NDArray[np.float32]:
    """Zero-mean, unit-variance triangular noise from two random bytes per pixel.

    Looks like Gaussian quantum noise and is ~5x cheaper than numpy's normal
    sampler at this size; numpy's byte stream is stable across versions.
    """
    raw = np.frombuffer(np.random.default_rng(seed).bytes(2 * math.prod(shape)), np.uint8)
    pair = raw.reshape(2, *shape)
    return cv2.addWeighted(pair[0], 1 / 104.5, pair[1], 1 / 104.5, -255 / 104.5, dtype=cv2.CV_32F)


def compose(spec: PhantomSpec, layers: dict[str, Mask]) -> NDArray[np.uint16]:
    """Attenuation -> blurred, noisy 12-bit display image (MONOCHROME2: bone bright).

    The mapping is fixed per spec (no per-image min/max), so removing a lesion
    changes only the pixels it covered.  cv2 does the full-size arithmetic: it
    is several times faster than numpy temporaries at 4 megapixels.
    """
    d = {k: v / 255 for k, v in _layer_densities(spec).items()}
    f32 = cv2.CV_32F
    bone = cv2.addWeighted(layers["bone"], d["bone"], layers["dense"], d["dense"], 0.0, dtype=f32)
    bone += cv2.addWeighted(
        layers["lytic"], d["lytic"], layers["posterior"], d["posterior"], 0.0, dtype=f32
    )
    att = cv2.multiply(bone, _trabecular(spec))
    att += _background(spec)
    att += cv2.addWeighted(
        layers["cortex"], d["cortex"], layers["metal"], d["metal"], 0.0, dtype=f32
    )
    rim = 0.25 * spec.bone_density / _OVERLAY_RIM  # per coverage level: faint rim, bright marker
    overlay = _overlay(spec)
    att += cv2.addWeighted(overlay, rim, overlay, 0.0, 0.0, dtype=f32)
    np.maximum(att, 0.0, out=att)
    display = cv2.exp(-att)
    display = cv2.GaussianBlur(1.0 - display, (0, 0), spec.blur_sigma)
    display = cv2.pow(display, spec.gamma)
    noise = _pixel_noise(spec.noise_seed, display.shape)
    noise *= cv2.sqrt(display + 0.05)
    display += noise * spec.noise_level
    span = spec.high - spec.low
    out = cv2.addWeighted(display, span, display, 0.0, spec.low, dtype=cv2.CV_16U)
    return np.minimum(out, MAX_VALUE, out=out)


def render_spec(spec: PhantomSpec) -> tuple[NDArray[np.uint16], list[Box]]:
    """Pure: the 12-bit display image (bone bright) and one tight box per lesion."""
    layers = rasterize(spec)
    return compose(spec, layers), lesion_boxes(spec, layers)


def render_phantom(
    rng: np.random.Generator,
    *,
    abnormal: bool | None = None,
    lesion_types: Sequence[str] | None = None,
    view: str | None = None,
) -> tuple[NDArray[np.uint16], list[Box]]:
    """Sample and render one phantom (see sample_phantom for the options)."""
    return render_spec(sample_phantom(rng, abnormal=abnormal, lesion_types=lesion_types, view=view))
