"""Lesions: how each class reshapes or adds to the anatomy, and the box of exactly its pixels.

Lesion-dependent drawing lives here (and only here), so rasterising a scene with
and without one lesion and comparing the masks gives that lesion's box.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

from training.datasets import Box
from training.phantoms import geometry as geo
from training.phantoms.anatomy import draw_bodies, draw_posterior, foramen_local
from training.phantoms.spec import LATERAL, Lesion, PhantomSpec, lerp, reserved_levels

_COVERAGE_TOLERANCE = 24  # of 255: mask changes below this are anti-aliasing jitter
_OPEN_KERNEL = np.ones((3, 3), np.uint8)
_LAYERS = ("bone", "cortex", "posterior", "dense", "lytic", "metal")


def body_mods(spec: PhantomSpec, lesions: Sequence[Lesion]) -> list[geo.BodyMods]:
    mods = [geo.BodyMods() for _ in spec.vertebrae]
    for les in lesions:
        v = spec.vertebrae[les.level]
        u = les.u
        if les.kind == "Spondylolisthesis":
            if u[0] < 0.12:  # retrolisthesis, rarer and smaller
                mods[les.level].shift = -v.width * lerp(0.25, 0.35, u[1])
            else:
                mods[les.level].shift = v.width * lerp(0.35, 0.5, u[1])
        elif les.kind == "Vertebral collapse":
            if spec.view == LATERAL and u[0] < 0.75:  # anterior wedge
                mods[les.level].front_factor = lerp(0.42, 0.58, u[1])
                mods[les.level].back_factor = lerp(0.82, 0.95, u[2])
            else:  # flattened (vertebra plana-like)
                mods[les.level].front_factor = lerp(0.45, 0.62, u[1])
                mods[les.level].back_factor = mods[les.level].front_factor * lerp(0.95, 1.05, u[2])
        elif les.kind == "Disc space narrowing":
            grow = v.disc_below * lerp(0.72, 0.85, u[0]) / 2
            mods[les.level].grow_bottom = grow
            mods[les.level + 1].grow_top = grow
        elif les.kind == "Foraminal stenosis":
            mods[les.level].foramen_u = lerp(0.2, 0.3, u[0])
            mods[les.level].foramen_v = lerp(0.35, 0.5, u[1])
    return mods


def _draw_osteophytes(spec: PhantomSpec, les: Lesion, layers: dict[str, geo.Mask]) -> None:
    """Beak-like spurs at the facing corners of the disc level (both, or one of them)."""
    upper, lower = spec.vertebrae[les.level], spec.vertebrae[les.level + 1]
    u = les.u
    side = 1.0 if spec.view == LATERAL or u[5] < 0.5 else -1.0
    which = ("both", "upper", "lower")[0 if u[0] < 0.55 else (1 if u[0] < 0.8 else 2)]
    for v, sign, name in ((upper, 1.0, "upper"), (lower, -1.0, "lower")):
        if which not in ("both", name):
            continue
        hw = v.width / 2
        h = v.h_front if side > 0 else v.h_back
        corner_w = sign * h / 2  # the endplate corner facing the disc
        length = v.width * lerp(0.25, 0.35, u[1])
        base = h * lerp(0.35, 0.48, u[2])
        beak = v.disc_below * lerp(0.25, 0.45, u[3])
        pu = [
            hw - 0.12 * v.width,
            hw - 0.02 * v.width,
            hw + length,
            hw + length * 0.55,
            hw - 0.08 * v.width,
        ]
        pw = [
            corner_w - sign * base,
            corner_w - sign * base,
            corner_w + sign * beak,
            corner_w + sign * beak * 1.1,
            corner_w + sign * 2.0,
        ]
        spur = geo.polygon(v, spec.facing, [side * p for p in pu], pw)
        geo.fill(layers["bone"], spur)
        geo.fill(layers["dense"], spur)
        geo.line(layers["cortex"], spur, max(3.0, 0.025 * v.width), closed=True)


def _draw_implant(spec: PhantomSpec, les: Lesion, layers: dict[str, geo.Mask]) -> None:
    """Pedicle screws in 2-3 adjacent bodies joined by rods, sometimes with an interbody cage."""
    metal = layers["metal"]
    span = sorted(reserved_levels(les.kind, les.level, les.u))
    u = les.u
    heads: dict[float, list[geo.Points]] = {}
    for j, idx in enumerate(span):
        v = spec.vertebrae[idx]
        hw, hh = v.width / 2, v.h_back / 2
        thick = v.width * lerp(0.07, 0.09, u[1])
        if spec.view == LATERAL:
            sides = [0.0]
            entry = (-hw - 0.55 * v.width, -hh * lerp(0.2, 0.45, u[2]))
            tip = (hw * lerp(0.45, 0.7, u[3]), -hh * lerp(0.05, 0.3, u[4]) + j * 2.0)
        else:
            sides = [-1.0, 1.0]
            entry, tip = (hw * 0.75, -hh * 0.35), (hw * 0.15, -hh * 0.1)
        for side in sides:
            sgn = side if side else 1.0
            eu, ew = sgn * entry[0], entry[1]
            tu, tw = sgn * tip[0], tip[1]
            du, dw = tu - eu, tw - ew
            norm = math.hypot(du, dw)
            nu, nw = -dw / norm * thick / 2, du / norm * thick / 2
            shaft = [eu + nu, tu + nu * 0.5, tu + du / norm * thick * 0.6, tu - nu * 0.5, eu - nu]
            shaft_w = [ew + nw, tw + nw * 0.5, tw + dw / norm * thick * 0.6, tw - nw * 0.5, ew - nw]
            geo.fill(metal, geo.polygon(v, spec.facing, shaft, shaft_w))
            hu, hw_ = geo.ellipse_local(eu, ew, thick * 1.1, thick * 1.1, n=24)
            head = geo.to_world(v, spec.facing, hu, hw_)
            geo.fill(metal, head)
            heads.setdefault(side, []).append(head.mean(axis=0))
    for centres in heads.values():
        rod = np.array(centres)
        width = spec.vertebrae[span[0]].width * lerp(0.05, 0.065, u[5])
        geo.line(metal, rod, width, closed=False)
    if spec.view == LATERAL and u[6] < 0.4:  # interbody cage: two radiopaque markers + frame
        v = spec.vertebrae[span[0]]
        hw, hh = v.width / 2, v.h_back / 2
        top, bottom = hh + 0.15 * v.disc_below, hh + 0.85 * v.disc_below
        frame = geo.polygon(
            v,
            spec.facing,
            [-hw * 0.55, hw * 0.55, hw * 0.55, -hw * 0.55],
            [top, top, bottom, bottom],
        )
        geo.line(metal, frame, max(3.0, 0.02 * v.width), closed=True)


def _draw_focal(spec: PhantomSpec, les: Lesion, layers: dict[str, geo.Mask]) -> None:
    """Other lesions: an irregular sclerotic or lytic focus inside a vertebral body."""
    v = spec.vertebrae[les.level]
    u = les.u
    radius = min(v.width * lerp(0.24, 0.3, u[1]), min(v.h_front, v.h_back) * 0.4)
    cu = (v.width / 2 - radius * 1.15) * lerp(-0.8, 0.8, u[2])
    cw = (min(v.h_front, v.h_back) / 2 - radius * 1.15) * lerp(-0.8, 0.8, u[3])
    t = np.linspace(0.0, 2.0 * math.pi, 64, endpoint=False)
    r = radius * (1 + 0.14 * np.sin(3 * t + 6.3 * u[4]) + 0.08 * np.sin(5 * t + 6.3 * u[5]))
    blob = geo.to_world(v, spec.facing, cu + r * np.cos(t), cw + r * np.sin(t))
    if u[0] < 0.5:
        geo.fill(layers["dense"], blob)
        geo.fill(layers["cortex"], blob)
    else:
        geo.fill(layers["lytic"], blob)
        geo.line(layers["cortex"], blob, max(3.0, 0.02 * v.width), closed=True)


def _facet_hypertrophy(spec: PhantomSpec, les: Lesion, layers: dict[str, geo.Mask]) -> None:
    """Bony overgrowth filling the back and bottom of a stenosed foramen (bright, not dark)."""
    v = spec.vertebrae[les.level]
    fu, fw = foramen_local(v, geo.BodyMods())
    cu, cw = float(fu.mean()), float(fw.mean())
    au, aw = float(np.ptp(fu)) / 2, float(np.ptp(fw)) / 2
    hu, hw = geo.ellipse_local(cu - 0.3 * au, cw + 0.3 * aw, 0.55 * au, 0.5 * aw)
    geo.fill(layers["dense"], geo.to_world(v, spec.facing, hu, hw))


def _collapse_sclerosis(
    spec: PhantomSpec, les: Lesion, mods: list[geo.BodyMods], layers: dict[str, geo.Mask]
) -> None:
    """A compressed body is denser: trabeculae packed into less height."""
    v = spec.vertebrae[les.level]
    local, _ = geo.body_local(v, mods[les.level])
    geo.fill(layers["dense"], geo.to_world(v, spec.facing, local[:, 0], local[:, 1]))


def rasterize(spec: PhantomSpec, lesions: Sequence[Lesion] | None = None) -> dict[str, geo.Mask]:
    """Draw the bone, cortex, posterior, dense, lytic and metal coverage masks (0-255).

    Lesion-dependent drawing lives here (and only here), so comparing the masks
    with and without one lesion gives exactly the pixels that lesion touches.
    """
    active = spec.lesions if lesions is None else tuple(lesions)
    layers = {name: np.zeros((spec.rows, spec.cols), np.uint8) for name in _LAYERS}
    mods = body_mods(spec, active)
    draw_bodies(spec, mods, layers)
    draw_posterior(spec, mods, layers)
    for les in active:
        if les.kind == "Osteophytes":
            _draw_osteophytes(spec, les, layers)
        elif les.kind == "Surgical implant":
            _draw_implant(spec, les, layers)
        elif les.kind == "Other lesions":
            _draw_focal(spec, les, layers)
        elif les.kind == "Vertebral collapse":
            _collapse_sclerosis(spec, les, mods, layers)
        elif les.kind == "Foraminal stenosis":
            _facet_hypertrophy(spec, les, layers)
    return layers


def _diff_box(a: dict[str, geo.Mask], b: dict[str, geo.Mask]) -> tuple[int, int, int, int] | None:
    rows = np.zeros(next(iter(a.values())).shape[0], bool)
    cols = np.zeros(next(iter(a.values())).shape[1], bool)
    for name in a:
        # Anti-aliased edges of unchanged straight walls can wobble by a few levels when a
        # segment's far end moves; only real coverage changes count.
        d = (cv2.absdiff(a[name], b[name]) > _COVERAGE_TOLERANCE).view(np.uint8)
        d = cv2.morphologyEx(d, cv2.MORPH_OPEN, _OPEN_KERNEL)  # drop 1-2 px slivers
        rows |= d.any(axis=1)
        cols |= d.any(axis=0)
    if not rows.any():
        return None
    r, c = np.flatnonzero(rows), np.flatnonzero(cols)
    return int(c[0]), int(r[0]), int(c[-1]) + 1, int(r[-1]) + 1


def lesion_boxes(spec: PhantomSpec, layers: dict[str, geo.Mask] | None = None) -> list[Box]:
    """One box per lesion: the bounding box (pixel edges) of every pixel that lesion changes."""
    full = rasterize(spec) if layers is None else layers
    boxes: list[Box] = []
    for k, les in enumerate(spec.lesions):
        found = _diff_box(full, rasterize(spec, spec.without_lesion(k).lesions))
        if found is None:  # cannot happen for the shapes above; keep the CSV honest anyway
            raise RuntimeError(f"lesion {les.kind} at level {les.level} drew nothing")
        boxes.append(Box(les.kind, *map(float, found)))
    return boxes
