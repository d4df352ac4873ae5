"""Synthetic spine radiographs with VinDr-SpineXR labels, for a demo bundle anyone can rebuild.

VinDr-SpineXR is credentialed-access data, so the project trains and checks
its demo models on phantoms: lateral and AP lumbar spines (vertebral bodies
with cortical endplates, disc spaces, posterior elements and foramina,
sacrum, soft tissue, noise, blur) carrying the seven VinDr lesion classes
where they occur.  Files and CSV follow the real dataset layout, and the DICOMs
mix the encodings a real archive holds (12-bit, MONOCHROME1/2, explicit VR,
JPEG 2000 lossless, RLE, with and without a window).

A phantom is a `PhantomSpec` (every random choice, made once by
`sample_phantom`) rendered by the pure function `render_spec`.  Each lesion's
box is the bounding box of exactly the pixels the lesion changes, found by
rasterising the scene with and without it.  Everything is a function of
(seed, split, index), so a set is reproducible byte for byte and can be built
in parallel.
"""

from __future__ import annotations

import hashlib
import math
import os
import zlib
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import get_encoder
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
    generate_uid,
)

from training.datasets import CLASS_NAMES, Box, ImageRecord, write_annotations_csv

LATERAL = "lateral"
AP = "ap"
MAX_VALUE = 4095  # 12 bits stored
#: Classes that cannot be seen on an AP view and so are only drawn on laterals.
LATERAL_ONLY = frozenset({"Spondylolisthesis", "Foraminal stenosis"})
_SUBPIXEL = 4  # cv2 fixed-point bits for sub-pixel polygon vertices
_COVERAGE_TOLERANCE = 24  # of 255: mask changes below this are anti-aliasing jitter
_OPEN_KERNEL = np.ones((3, 3), np.uint8)

Points = NDArray[np.float64]
Mask = NDArray[np.uint8]


# ------------------------------------------------------------------------ spec


@dataclass(frozen=True)
class Vertebra:
    """One vertebral body in image pixels; the frame turns with the column's tangent."""

    cx: float
    cy: float
    angle: float  # radians: the body's vertical axis is (-sin, cos)
    width: float
    h_front: float  # full height at the anterior wall (one side wall on AP views)
    h_back: float
    disc_below: float  # height of the disc space under this body


@dataclass(frozen=True)
class Lesion:
    """A lesion class at a vertebra (or the disc under it) and the uniforms fixing its shape."""

    kind: str
    level: int
    u: tuple[float, ...]


@dataclass(frozen=True)
class PhantomSpec:
    """Every random choice of one phantom; `render_spec` turns it into pixels deterministically."""

    rows: int
    cols: int
    view: str
    facing: int  # +1: anterior (or the spine's "front" wall) points to +x
    vertebrae: tuple[Vertebra, ...]
    sacrum: bool
    lesions: tuple[Lesion, ...]
    soft_center: float  # soft-tissue profile, in pixels
    soft_radius: float
    soft_density: float
    bone_density: float
    cortex_density: float
    blur_sigma: float
    noise_level: float  # fraction of the output range
    gamma: float
    low: float  # 12-bit output range
    high: float
    marker: str  # burned-in side letter, "" for none
    noise_seed: int
    extras: tuple[float, ...] = field(default=())  # uniforms for lesion-independent detail

    def without_lesion(self, index: int) -> PhantomSpec:
        """The same phantom minus one lesion (what the box tests compare against)."""
        return replace(self, lesions=self.lesions[:index] + self.lesions[index + 1 :])


def _lerp(a: float, b: float, t: float) -> float:
    return a + (b - a) * t


def _reserved(kind: str, level: int, u: Sequence[float]) -> set[int]:
    """Vertebrae a lesion changes or hangs on: lesions never share one, so boxes stay clean."""
    if kind == "Surgical implant":
        return set(range(level, level + (3 if u[0] < 0.3 else 2)))
    if kind in ("Osteophytes", "Disc space narrowing", "Foraminal stenosis"):
        return {level, level + 1}
    return {level}


def _level_range(kind: str, n: int, u: Sequence[float]) -> range:
    """Levels where a lesion kind fits (disc levels need a body below, slips a body above)."""
    span = len(_reserved(kind, 0, u))
    if kind == "Spondylolisthesis":
        return range(1, n)
    return range(0, n - span + 1)


def _sample_column(
    rng: np.random.Generator, rows: int, cols: int, view: str, facing: int
) -> tuple[tuple[Vertebra, ...], bool]:
    """Lay the bodies along a gently curved, tilted centre line that fits the image."""
    n = int(rng.integers(5, 7))
    sacrum = bool(rng.random() < 0.75)
    top = rows * rng.uniform(0.04, 0.12)
    bottom = rows * rng.uniform(0.78 if sacrum else 0.86, 0.9 if sacrum else 0.96)
    disc_ratio = rng.uniform(0.24, 0.34)
    aspect = rng.uniform(1.2, 1.45) if view == LATERAL else rng.uniform(1.45, 1.75)
    growth = 1.0 + 0.045 * np.arange(n)  # lower lumbar bodies are bigger
    discs = disc_ratio * growth * np.linspace(1.0, 1.15, n)
    if not sacrum:
        discs[-1] = 0.0
    base = (bottom - top) / float(growth.sum() + discs.sum())
    max_width = cols * (0.25 if view == LATERAL else 0.3)
    base = min(base, max_width / (aspect * growth[-1]))
    h = base * growth
    d = base * discs
    length = float(h.sum() + d[:-1].sum())
    # Centre line x(s) along arc length s from the top: tilt plus lordosis (lateral) or a
    # mild scoliotic bow (AP).
    tilt = rng.uniform(-0.1, 0.1)
    bow = rng.uniform(0.04, 0.1) * cols * (-facing if view == LATERAL else rng.choice([-1, 1]))
    if view == AP:
        bow *= 0.4
    center_x = cols * rng.uniform(0.4, 0.6)

    def x_at(s: float) -> float:
        t = 2.0 * s / length - 1.0
        return center_x + tilt * (s - length / 2) + bow * (1.0 - t * t) - bow * 0.5

    def angle_at(s: float) -> float:
        t = 2.0 * s / length - 1.0
        dxds = tilt - 2.0 * bow * t * 2.0 / length
        return math.atan2(-dxds, 1.0)

    verts: list[Vertebra] = []
    s = 0.0
    for i in range(n):
        s_mid = s + h[i] / 2
        wedge = rng.uniform(-0.05, 0.08) if view == LATERAL else rng.uniform(-0.03, 0.03)
        verts.append(
            Vertebra(
                cx=x_at(s_mid),
                cy=top + s_mid,
                angle=angle_at(s_mid),
                width=float(base * aspect * growth[i] * rng.uniform(0.96, 1.04)),
                h_front=float(h[i] * (1 + wedge)),
                h_back=float(h[i] * (1 - wedge)),
                disc_below=float(d[i]),
            )
        )
        s += h[i] + d[i]
    # Slide the column sideways so that bodies, posterior elements and spurs stay inside.
    back, front = (1.85, 0.9) if view == LATERAL else (0.95, 0.95)
    left = min(v.cx - v.width * (back if facing > 0 else front) for v in verts)
    right = max(v.cx + v.width * (front if facing > 0 else back) for v in verts)
    room_lo, room_hi = cols * 0.03 - left, cols * 0.97 - right
    offset = rng.uniform(room_lo, room_hi) if room_lo <= room_hi else (room_lo + room_hi) / 2
    if view == AP:
        offset = _lerp(room_lo, room_hi, rng.uniform(0.35, 0.65))
    verts = [replace(v, cx=v.cx + offset) for v in verts]
    return tuple(verts), sacrum


def _place_lesions(
    rng: np.random.Generator, kinds: Sequence[str], n_vertebrae: int, strict: bool
) -> tuple[Lesion, ...]:
    """Put each lesion on vertebrae of its own (random, with retries).

    strict (forced lesion lists) raises ValueError when they cannot all fit;
    otherwise the best attempt wins and lesions that did not fit are dropped.
    """
    best: list[Lesion] = []
    for _ in range(50):
        used: set[int] = set()
        placed: list[Lesion] = []
        for kind in kinds:
            u = tuple(float(x) for x in rng.random(12))
            options = [
                lv for lv in _level_range(kind, n_vertebrae, u) if not _reserved(kind, lv, u) & used
            ]
            if options:
                level = int(rng.choice(options))
                used |= _reserved(kind, level, u)
                placed.append(Lesion(kind, level, u))
        if len(placed) > len(best):
            best = placed
        if len(best) == len(kinds):
            break
    if strict and len(best) < len(kinds):
        raise ValueError(f"cannot place lesions {list(kinds)} on {n_vertebrae} vertebrae")
    return tuple(best)


def sample_phantom(
    rng: np.random.Generator,
    *,
    abnormal: bool | None = None,
    lesion_types: Sequence[str] | None = None,
    view: str | None = None,
) -> PhantomSpec:
    """Draw one phantom: about half normal, abnormal ones carry 1-3 lesions of the 7 classes.

    lesion_types forces the lesions (and implies abnormal); view forces
    "lateral" or "ap" (AP views never get the lateral-only classes).
    """
    rows = int(rng.integers(1600, 2401))
    cols = int(rng.integers(1200, 1801))
    chosen_view = view or (LATERAL if rng.random() < 0.7 else AP)
    if chosen_view not in (LATERAL, AP):
        raise ValueError(f"view must be {LATERAL!r} or {AP!r}")
    facing = int(rng.choice([-1, 1])) if chosen_view == LATERAL else 1
    vertebrae, sacrum = _sample_column(rng, rows, cols, chosen_view, facing)

    if lesion_types is not None:
        kinds = list(lesion_types)
        unknown = set(kinds) - set(CLASS_NAMES)
        if unknown:
            raise ValueError(f"unknown lesion types {sorted(unknown)}")
        if chosen_view == AP and set(kinds) & LATERAL_ONLY:
            raise ValueError(f"{sorted(set(kinds) & LATERAL_ONLY)} are not visible on AP views")
    else:
        is_abnormal = bool(rng.random() < 0.5) if abnormal is None else abnormal
        allowed = [c for c in CLASS_NAMES if chosen_view == LATERAL or c not in LATERAL_ONLY]
        count = int(rng.choice([1, 2, 3], p=[0.45, 0.35, 0.2])) if is_abnormal else 0
        kinds = [str(k) for k in rng.choice(allowed, size=count)]
    lesions = _place_lesions(rng, kinds, len(vertebrae), strict=lesion_types is not None)

    low = float(rng.uniform(40, 420))
    return PhantomSpec(
        rows=rows,
        cols=cols,
        view=chosen_view,
        facing=facing,
        vertebrae=vertebrae,
        sacrum=sacrum,
        lesions=lesions,
        soft_center=float(vertebrae[len(vertebrae) // 2].cx + facing * cols * rng.uniform(0, 0.15)),
        soft_radius=float(cols * rng.uniform(0.45, 0.85)),
        soft_density=float(rng.uniform(0.45, 0.85)),
        bone_density=float(rng.uniform(0.6, 0.85)),
        cortex_density=float(rng.uniform(0.45, 0.7)),
        blur_sigma=float(rng.uniform(0.8, 1.8)),
        noise_level=float(rng.uniform(0.006, 0.016)),
        gamma=float(rng.uniform(0.8, 1.35)),
        low=low,
        high=float(rng.uniform(max(low + 2400, 3000), 4060)),
        marker=str(rng.choice(["", "L", "R"])),
        noise_seed=int(rng.integers(0, 2**31 - 1)),
        extras=tuple(float(x) for x in rng.random(16)),
    )


# ------------------------------------------------------------------- geometry


@dataclass
class _BodyMods:
    """How lesions reshape one body (all zero / one for a normal body)."""

    shift: float = 0.0
    grow_top: float = 0.0
    grow_bottom: float = 0.0
    front_factor: float = 1.0
    back_factor: float = 1.0
    foramen_u: float = 1.0  # scale of the foramen under this body (1: normal)
    foramen_v: float = 1.0


def _to_world(v: Vertebra, facing: int, u: Points, w: Points) -> Points:
    """Body frame (u toward the front wall, w down the body axis) -> image (x, y)."""
    c, s = math.cos(v.angle), math.sin(v.angle)
    fu = facing * np.asarray(u, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    return np.stack([v.cx + fu * c - w * s, v.cy + fu * s + w * c], axis=-1)


def _fillet(corner: Points, before: Points, after: Points, radius: float, n: int = 7) -> Points:
    """Quadratic-Bezier rounding of one polygon corner."""
    a = corner + radius * (before - corner) / max(np.linalg.norm(before - corner), 1e-9)
    b = corner + radius * (after - corner) / max(np.linalg.norm(after - corner), 1e-9)
    t = np.linspace(0.0, 1.0, n)[:, None]
    return (1 - t) ** 2 * a + 2 * (1 - t) * t * corner + t**2 * b


def _body_local(v: Vertebra, m: _BodyMods) -> tuple[Points, NDArray[np.bool_]]:
    """Rounded trapezoid with concave endplates in the body frame (u forward, w down).

    Side walls are straight, so growing an endplate into the disc or lowering a
    collapsed upper endplate changes only the pixels near that endplate.
    Returns the outline and a flag per point marking the two endplates.
    """
    hw = v.width / 2
    bottom_f, bottom_b = v.h_front / 2, v.h_back / 2
    # A collapsed body keeps its lower endplate; its upper endplate comes down.
    top_f = bottom_f - v.h_front * m.front_factor - m.grow_top
    top_b = bottom_b - v.h_back * m.back_factor - m.grow_top
    bottom_f += m.grow_bottom
    bottom_b += m.grow_bottom
    corners = np.array([[-hw, top_b], [hw, top_f], [hw, bottom_f], [-hw, bottom_b]]) + [m.shift, 0]
    radius = 0.14 * min(v.width, v.h_front * m.front_factor, v.h_back * m.back_factor)
    sag = 0.045 * min(v.h_front, v.h_back)
    pieces: list[Points] = []
    flags: list[NDArray[np.bool_]] = []
    for i in range(4):
        arc = _fillet(corners[i], corners[i - 1], corners[(i + 1) % 4], radius)
        pieces.append(arc)
        flags.append(np.zeros(len(arc), bool))
        nxt = _fillet(corners[(i + 1) % 4], corners[i], corners[(i + 2) % 4], radius)[0]
        if i in (0, 2):  # endplates: sag toward the body centre
            t = np.linspace(0.0, 1.0, 14)[1:-1, None]
            edge = arc[-1] + t * (nxt - arc[-1])
            edge[:, 1] += (1 if i == 0 else -1) * sag * np.sin(np.pi * t[:, 0])
            pieces.append(edge)
            flags.append(np.ones(len(edge), bool))
    return np.concatenate(pieces), np.concatenate(flags)


def _polygon(v: Vertebra, facing: int, u: Sequence[float], w: Sequence[float]) -> Points:
    return _to_world(v, facing, np.asarray(u, float), np.asarray(w, float))


def _ellipse_local(
    cu: float, cw: float, au: float, aw: float, n: int = 48
) -> tuple[Points, Points]:
    t = np.linspace(0.0, 2.0 * math.pi, n, endpoint=False)
    return cu + au * np.cos(t), cw + aw * np.sin(t)


def _fixed(points: Points) -> NDArray[np.int32]:
    return np.round(points * (1 << _SUBPIXEL)).astype(np.int32).reshape(-1, 1, 2)


def _fill(mask: Mask, points: Points, value: int = 255) -> None:
    cv2.fillPoly(mask, [_fixed(points)], value, lineType=cv2.LINE_AA, shift=_SUBPIXEL)


def _line(mask: Mask, points: Points, thickness: float, closed: bool, value: int = 255) -> None:
    cv2.polylines(
        mask,
        [_fixed(points)],
        closed,
        value,
        thickness=max(1, int(round(thickness))),
        lineType=cv2.LINE_AA,
        shift=_SUBPIXEL,
    )


# ------------------------------------------------------------------ rendering

_LAYERS = ("bone", "cortex", "posterior", "dense", "lytic", "metal")


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


def _mods(spec: PhantomSpec, lesions: Sequence[Lesion]) -> list[_BodyMods]:
    mods = [_BodyMods() for _ in spec.vertebrae]
    for les in lesions:
        v = spec.vertebrae[les.level]
        u = les.u
        if les.kind == "Spondylolisthesis":
            if u[0] < 0.12:  # retrolisthesis, rarer and smaller
                mods[les.level].shift = -v.width * _lerp(0.25, 0.35, u[1])
            else:
                mods[les.level].shift = v.width * _lerp(0.35, 0.5, u[1])
        elif les.kind == "Vertebral collapse":
            if spec.view == LATERAL and u[0] < 0.75:  # anterior wedge
                mods[les.level].front_factor = _lerp(0.42, 0.58, u[1])
                mods[les.level].back_factor = _lerp(0.82, 0.95, u[2])
            else:  # flattened (vertebra plana-like)
                mods[les.level].front_factor = _lerp(0.45, 0.62, u[1])
                mods[les.level].back_factor = mods[les.level].front_factor * _lerp(0.95, 1.05, u[2])
        elif les.kind == "Disc space narrowing":
            grow = v.disc_below * _lerp(0.72, 0.85, u[0]) / 2
            mods[les.level].grow_bottom = grow
            mods[les.level + 1].grow_top = grow
        elif les.kind == "Foraminal stenosis":
            mods[les.level].foramen_u = _lerp(0.2, 0.3, u[0])
            mods[les.level].foramen_v = _lerp(0.35, 0.5, u[1])
    return mods


def _draw_bodies(spec: PhantomSpec, mods: list[_BodyMods], layers: dict[str, Mask]) -> None:
    for v, m in zip(spec.vertebrae, mods, strict=True):
        local, endplate = _body_local(v, m)
        outline = _to_world(v, spec.facing, local[:, 0], local[:, 1])
        _fill(layers["bone"], outline)
        cortex = max(3.0, 0.03 * v.width)
        _line(layers["cortex"], outline, cortex, closed=True)
        half = len(outline) // 2  # thicker, brighter endplates (top half, bottom half)
        top, bottom = np.flatnonzero(endplate[:half]), half + np.flatnonzero(endplate[half:])
        for part, grown in ((top, m.grow_top), (bottom, m.grow_bottom)):
            _line(layers["cortex"], outline[part], cortex * 1.8, closed=False)
            if grown:  # degenerated disc: sclerotic band along the endplate
                _line(layers["dense"], outline[part], 0.14 * v.h_back, closed=False)
    if spec.sacrum:
        last = spec.vertebrae[-1]
        hs = last.h_back
        lift = 0.35 if spec.view == LATERAL else 0.0
        down = last.h_back / 2 + last.disc_below + hs / 2
        c, s = math.cos(last.angle), math.sin(last.angle)
        sac = replace(
            last,
            cx=last.cx - down * s,
            cy=last.cy + down * c,
            angle=last.angle + spec.facing * lift,
        )
        hw = sac.width / 2
        if spec.view == LATERAL:
            u = [hw, hw * 0.2, -hw, -hw * 1.2, -hw * 0.9, hw * 0.1, hw * 0.9]
            w = [-hs / 2, -hs / 2 - 2, -hs / 2, hs * 0.8, hs * 2.4, hs * 2.6, hs * 0.3]
        else:
            u = [hw * 1.35, hw * 0.5, -hw * 0.5, -hw * 1.35, -hw * 0.35, hw * 0.35]
            w = [-hs / 2, -hs / 2 - 2, -hs / 2 - 2, -hs / 2, hs * 2.6, hs * 2.6]
        outline = _polygon(sac, spec.facing, u, w)
        _fill(layers["bone"], outline)
        _line(layers["cortex"], outline, max(3.0, 0.03 * sac.width), closed=True)


def _foramen_local(v: Vertebra, m: _BodyMods) -> tuple[Points, Points]:
    """Neural foramen behind the disc under v (lateral views), scaled down by stenosis."""
    pedicle = 0.42 * v.width
    hh = v.h_back / 2
    top, bottom = -0.15 * hh, hh + v.disc_below + 0.2 * hh
    au, aw = 0.5 * pedicle, (bottom - top) / 2
    cu, cw = -v.width / 2 - au * 0.92, (top + bottom) / 2
    au_s, aw_s = au * m.foramen_u, aw * m.foramen_v
    # Stenosis narrows from behind and below (facet and disc): keep the upper-front part.
    cu_s = cu + (au - au_s) * 0.9
    cw_s = cw - (aw - aw_s) * 0.7
    return _ellipse_local(cu_s, cw_s, au_s, aw_s)


def _draw_posterior(spec: PhantomSpec, mods: list[_BodyMods], layers: dict[str, Mask]) -> None:
    post = layers["posterior"]
    n = len(spec.vertebrae)
    for i, v in enumerate(spec.vertebrae):
        hw, hh = v.width / 2, v.h_back / 2
        if spec.view == LATERAL:
            pedicle, pillar = 0.36 * v.width, 0.3 * v.width
            back = -hw - pedicle - pillar
            reach = hh + (v.disc_below + 0.25 * hh if i < n - 1 else 0.4 * v.disc_below)
            _fill(
                post,
                _polygon(
                    v,
                    spec.facing,
                    [-hw + 4, back + 6, back, -hw + 4],
                    [-hh * 0.92, -hh * 1.05, reach, reach],
                ),
            )
            spin = [back + 10, back - 0.55 * v.width, back - 0.62 * v.width, back + 10]
            _fill(
                post, _polygon(v, spec.facing, spin, [-hh * 0.55, -hh * 0.05, hh * 0.45, hh * 0.7])
            )
        else:
            for side in (-1, 1):
                _fill(
                    post,
                    _polygon(
                        v,
                        spec.facing,
                        [side * hw * 0.85, side * hw * 1.75, side * hw * 1.75, side * hw * 0.85],
                        [-hh * 0.7, -hh * 0.5, -hh * 0.25, -hh * 0.15],
                    ),
                )
                eu, ew = _ellipse_local(side * hw * 0.62, -hh * 0.35, hw * 0.17, hh * 0.3)
                _line(post, _to_world(v, spec.facing, eu, ew), max(4.0, 0.035 * v.width), True)
            _fill(
                post,
                _polygon(
                    v,
                    spec.facing,
                    [-hw * 0.6, hw * 0.6, hw * 0.2, -hw * 0.2],
                    [-hh * 0.1, -hh * 0.1, hh * 0.9, hh * 0.9],
                ),
            )
            su, sw = _ellipse_local(0.0, hh * 0.55, hw * 0.12, hh * 0.55)
            _fill(post, _to_world(v, spec.facing, su, sw))
    if spec.view == LATERAL:
        for v, m in zip(spec.vertebrae[:-1], mods[:-1], strict=True):  # carve the foramina
            fu, fw = _foramen_local(v, m)
            _fill(post, _to_world(v, spec.facing, fu, fw), value=0)


def _draw_osteophytes(spec: PhantomSpec, les: Lesion, layers: dict[str, Mask]) -> None:
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
        length = v.width * _lerp(0.25, 0.35, u[1])
        base = h * _lerp(0.35, 0.48, u[2])
        beak = v.disc_below * _lerp(0.25, 0.45, u[3])
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
        spur = _polygon(v, spec.facing, [side * p for p in pu], pw)
        _fill(layers["bone"], spur)
        _fill(layers["dense"], spur)
        _line(layers["cortex"], spur, max(3.0, 0.025 * v.width), closed=True)


def _draw_implant(spec: PhantomSpec, les: Lesion, layers: dict[str, Mask]) -> None:
    """Pedicle screws in 2-3 adjacent bodies joined by rods, sometimes with an interbody cage."""
    metal = layers["metal"]
    span = sorted(_reserved(les.kind, les.level, les.u))
    u = les.u
    heads: dict[float, list[Points]] = {}
    for j, idx in enumerate(span):
        v = spec.vertebrae[idx]
        hw, hh = v.width / 2, v.h_back / 2
        thick = v.width * _lerp(0.07, 0.09, u[1])
        if spec.view == LATERAL:
            sides = [0.0]
            entry = (-hw - 0.55 * v.width, -hh * _lerp(0.2, 0.45, u[2]))
            tip = (hw * _lerp(0.45, 0.7, u[3]), -hh * _lerp(0.05, 0.3, u[4]) + j * 2.0)
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
            _fill(metal, _polygon(v, spec.facing, shaft, shaft_w))
            hu, hw_ = _ellipse_local(eu, ew, thick * 1.1, thick * 1.1, n=24)
            head = _to_world(v, spec.facing, hu, hw_)
            _fill(metal, head)
            heads.setdefault(side, []).append(head.mean(axis=0))
    for centres in heads.values():
        rod = np.array(centres)
        width = spec.vertebrae[span[0]].width * _lerp(0.05, 0.065, u[5])
        _line(metal, rod, width, closed=False)
    if spec.view == LATERAL and u[6] < 0.4:  # interbody cage: two radiopaque markers + frame
        v = spec.vertebrae[span[0]]
        hw, hh = v.width / 2, v.h_back / 2
        top, bottom = hh + 0.15 * v.disc_below, hh + 0.85 * v.disc_below
        frame = _polygon(
            v,
            spec.facing,
            [-hw * 0.55, hw * 0.55, hw * 0.55, -hw * 0.55],
            [top, top, bottom, bottom],
        )
        _line(metal, frame, max(3.0, 0.02 * v.width), closed=True)


def _draw_focal(spec: PhantomSpec, les: Lesion, layers: dict[str, Mask]) -> None:
    """Other lesions: an irregular sclerotic or lytic focus inside a vertebral body."""
    v = spec.vertebrae[les.level]
    u = les.u
    radius = min(v.width * _lerp(0.24, 0.3, u[1]), min(v.h_front, v.h_back) * 0.4)
    cu = (v.width / 2 - radius * 1.15) * _lerp(-0.8, 0.8, u[2])
    cw = (min(v.h_front, v.h_back) / 2 - radius * 1.15) * _lerp(-0.8, 0.8, u[3])
    t = np.linspace(0.0, 2.0 * math.pi, 64, endpoint=False)
    r = radius * (1 + 0.14 * np.sin(3 * t + 6.3 * u[4]) + 0.08 * np.sin(5 * t + 6.3 * u[5]))
    blob = _to_world(v, spec.facing, cu + r * np.cos(t), cw + r * np.sin(t))
    if u[0] < 0.5:
        _fill(layers["dense"], blob)
        _fill(layers["cortex"], blob)
    else:
        _fill(layers["lytic"], blob)
        _line(layers["cortex"], blob, max(3.0, 0.02 * v.width), closed=True)


def _facet_hypertrophy(spec: PhantomSpec, les: Lesion, layers: dict[str, Mask]) -> None:
    """Bony overgrowth filling the back and bottom of a stenosed foramen (bright, not dark)."""
    v = spec.vertebrae[les.level]
    fu, fw = _foramen_local(v, _BodyMods())
    cu, cw = float(fu.mean()), float(fw.mean())
    au, aw = float(np.ptp(fu)) / 2, float(np.ptp(fw)) / 2
    hu, hw = _ellipse_local(cu - 0.3 * au, cw + 0.3 * aw, 0.55 * au, 0.5 * aw)
    _fill(layers["dense"], _to_world(v, spec.facing, hu, hw))


def _collapse_sclerosis(
    spec: PhantomSpec, les: Lesion, mods: list[_BodyMods], layers: dict[str, Mask]
) -> None:
    """A compressed body is denser: trabeculae packed into less height."""
    v = spec.vertebrae[les.level]
    local, _ = _body_local(v, mods[les.level])
    _fill(layers["dense"], _to_world(v, spec.facing, local[:, 0], local[:, 1]))


def rasterize(spec: PhantomSpec, lesions: Sequence[Lesion] | None = None) -> dict[str, Mask]:
    """Draw the bone, cortex, posterior, dense, lytic and metal coverage masks (0-255).

    Lesion-dependent drawing lives here (and only here), so comparing the masks
    with and without one lesion gives exactly the pixels that lesion touches.
    """
    active = spec.lesions if lesions is None else tuple(lesions)
    layers = {name: np.zeros((spec.rows, spec.cols), np.uint8) for name in _LAYERS}
    mods = _mods(spec, active)
    _draw_bodies(spec, mods, layers)
    _draw_posterior(spec, mods, layers)
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


def _diff_box(a: dict[str, Mask], b: dict[str, Mask]) -> tuple[int, int, int, int] | None:
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


def lesion_boxes(spec: PhantomSpec, layers: dict[str, Mask] | None = None) -> list[Box]:
    """One box per lesion: the bounding box (pixel edges) of every pixel that lesion changes."""
    full = rasterize(spec) if layers is None else layers
    boxes: list[Box] = []
    for k, les in enumerate(spec.lesions):
        found = _diff_box(full, rasterize(spec, spec.without_lesion(k).lesions))
        if found is None:  # cannot happen for the shapes above; keep the CSV honest anyway
            raise RuntimeError(f"lesion {les.kind} at level {les.level} drew nothing")
        boxes.append(Box(les.kind, *map(float, found)))
    return boxes


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


# ----------------------------------------------------------------------- DICOM

_DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
ENCODINGS = ("explicit", "jpeg2000", "rle")


@dataclass(frozen=True)
class PhantomItem:
    """Identity and encoding choices of the index-th phantom of a (seed, split) set."""

    index: int
    image_id: str
    study_id: str
    series_id: str
    rad_id: str
    spec: PhantomSpec
    encoding: str  # one of ENCODINGS
    monochrome1: bool
    windowed: bool


def _hex_id(seed: int, split: str, index: int, what: str) -> str:
    return hashlib.sha256(f"spine-phantom/{seed}/{split}/{index}/{what}".encode()).hexdigest()[:32]


def phantom_item(seed: int, split: str, index: int) -> PhantomItem:
    """Everything about one phantom, from (seed, split, index) alone (order-independent)."""
    key = zlib.crc32(split.encode())
    rng = np.random.default_rng(np.random.SeedSequence([seed & 0xFFFFFFFF, key, index]))
    spec = sample_phantom(rng)
    return PhantomItem(
        index=index,
        image_id=_hex_id(seed, split, index, "image"),
        study_id=_hex_id(seed, split, index, "study"),
        series_id=_hex_id(seed, split, index, "series"),
        rad_id=f"rad{int(rng.integers(1, 4))}",
        spec=spec,
        encoding=ENCODINGS[int(rng.choice(3, p=[0.34, 0.33, 0.33]))],
        monochrome1=bool(rng.random() < 0.4),
        windowed=bool(rng.random() < 0.5),
    )


def _uid(item: PhantomItem, seed: int, split: str, what: str) -> str:
    return str(generate_uid(entropy_srcs=[f"spine-phantom/{seed}/{split}/{item.index}/{what}"]))


def phantom_dataset(
    item: PhantomItem, display: NDArray[np.uint16], seed: int, split: str
) -> Dataset:
    """A DX DICOM dataset for one phantom (pixel data encoded as item.encoding says).

    MONOCHROME1 files store 4095 - display, so that a viewer's inversion shows
    the same anatomy; their window centre is mirrored the same way.
    """
    stored = (MAX_VALUE - display).astype(np.uint16) if item.monochrome1 else display
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = _DX_FOR_PRESENTATION
    sop_uid = _uid(item, seed, split, "sop")
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.SOPClassUID = _DX_FOR_PRESENTATION
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = _uid(item, seed, split, "study")
    ds.SeriesInstanceUID = _uid(item, seed, split, "series")
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20200101"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    ds.AccessionNumber = ""
    ds.Modality = "DX"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.Manufacturer = "spine-lesion-service synthetic phantom"
    ds.StudyDescription = "SYNTHETIC PHANTOM - NOT A PATIENT"
    ds.SeriesDescription = f"L-SPINE {'LAT' if item.spec.view == LATERAL else 'AP'} (synthetic)"
    ds.PatientName = "PHANTOM^SYNTHETIC"
    ds.PatientID = f"PHANTOM-{item.study_id[:12].upper()}"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.BodyPartExamined = "LSPINE"
    ds.ViewPosition = "LL" if item.spec.view == LATERAL else "AP"
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.BurnedInAnnotation = "NO"
    ds.ImagerPixelSpacing = ds.PixelSpacing = [0.15, 0.15]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if item.monochrome1 else "MONOCHROME2"
    ds.Rows, ds.Columns = (int(n) for n in display.shape)
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    if item.windowed:
        lo, hi = (float(q) for q in np.percentile(display[::8, ::8], [0.5, 99.5]))
        center = (lo + hi) / 2
        ds.WindowCenter = round(MAX_VALUE - center if item.monochrome1 else center, 1)
        ds.WindowWidth = round(max(hi - lo, 64.0) * 1.1, 1)
        ds.VOILUTFunction = "LINEAR"
    ds.LossyImageCompression = "00"
    if item.encoding == "explicit":
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.PixelData = np.ascontiguousarray(stored).tobytes()
    elif item.encoding == "jpeg2000":
        ds.compress(
            JPEG2000Lossless, stored, encoding_plugin="pylibjpeg", generate_instance_uid=False
        )
    else:
        ds.compress(RLELossless, stored, encoding_plugin=_rle_plugin(), generate_instance_uid=False)
    return ds


def _rle_plugin() -> str:
    """pylibjpeg-rle is ~10x faster than pydicom's own encoder and writes the same bytes."""
    plugins = get_encoder(RLELossless).available_plugins
    return "pylibjpeg" if "pylibjpeg" in plugins else "pydicom"


def _write_one(args: tuple[Path, int, str, int, tuple[str, ...]]) -> ImageRecord:
    images_dir, seed, split, index, encodings = args
    item = phantom_item(seed, split, index)
    if item.encoding not in encodings:  # same pixels, another lossless syntax
        item = replace(item, encoding=encodings[index % len(encodings)])
    display, boxes = render_spec(item.spec)
    path = images_dir / f"{item.image_id}.dicom"
    phantom_dataset(item, display, seed, split).save_as(path, enforce_file_format=True)
    return ImageRecord(
        image_id=item.image_id,
        path=path,
        boxes=[replace(b, rad_id=item.rad_id) for b in boxes],
        study_id=item.study_id,
        series_id=item.series_id,
        rad_ids=(item.rad_id,),
    )


def _init_worker() -> None:
    cv2.setNumThreads(1)  # one process per core already


def generate_phantoms(
    out_dir: Path,
    count: int,
    seed: int,
    split: str = "train",
    progress: bool = True,
    workers: int | None = None,
    encodings: tuple[str, ...] = ENCODINGS,
) -> Path:
    """Write `count` phantoms as `out_dir/<split>_images/<id>.dicom` + `annotations/<split>.csv`.

    Output is a function of (seed, split, index) only, so it is byte-identical
    across runs and worker counts, and a smaller count is a prefix of a larger
    one.  workers defaults to the CPU count (processes; small sets run inline).
    encodings restricts the transfer syntaxes (all lossless, so the pixels are the
    same): training sets skip JPEG 2000, whose encode and decode cost most of the time.
    """
    from tqdm import tqdm

    if count < 0:
        raise ValueError("count must be >= 0")
    if not encodings or set(encodings) - set(ENCODINGS):
        raise ValueError(f"encodings must be a non-empty subset of {ENCODINGS}")
    out_dir = Path(out_dir)
    images_dir = out_dir / f"{split}_images"
    images_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(images_dir, seed, split, i, tuple(encodings)) for i in range(count)]
    # Spawning costs ~1 s per process: small sets run inline unless workers is given.
    n_workers = min(workers, count) if workers else min(os.cpu_count() or 1, max(1, count // 4))
    bar = tqdm(total=count, desc=f"phantoms {split}", unit="img", disable=not progress)
    records: list[ImageRecord] = []
    try:
        if n_workers <= 1:
            for job in jobs:
                records.append(_write_one(job))
                bar.update()
        else:
            ctx = get_context("spawn")
            with ProcessPoolExecutor(n_workers, mp_context=ctx, initializer=_init_worker) as pool:
                for rec in pool.map(_write_one, jobs, chunksize=2):
                    records.append(rec)
                    bar.update()
    finally:
        bar.close()
    write_annotations_csv(out_dir / "annotations" / f"{split}.csv", records)
    return out_dir
