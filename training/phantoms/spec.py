"""The random half of a phantom: every choice made once, from one generator, into a PhantomSpec.

`sample_phantom` lays lumbar bodies along a curved, tilted centre line that fits
the image and puts each lesion on vertebrae of its own; nothing here draws.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from training.datasets import CLASS_NAMES

LATERAL = "lateral"
AP = "ap"
MAX_VALUE = 4095  # 12 bits stored
#: Classes that cannot be seen on an AP view and so are only drawn on laterals.
LATERAL_ONLY = frozenset({"Spondylolisthesis", "Foraminal stenosis"})


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


def lerp(a: float, b: float, t: float) -> float:
    return a + (b - a) * t


def reserved_levels(kind: str, level: int, u: Sequence[float]) -> set[int]:
    """Vertebrae a lesion changes or hangs on: lesions never share one, so boxes stay clean."""
    if kind == "Surgical implant":
        return set(range(level, level + (3 if u[0] < 0.3 else 2)))
    if kind in ("Osteophytes", "Disc space narrowing", "Foraminal stenosis"):
        return {level, level + 1}
    return {level}


def _level_range(kind: str, n: int, u: Sequence[float]) -> range:
    """Levels where a lesion kind fits (disc levels need a body below, slips a body above)."""
    span = len(reserved_levels(kind, 0, u))
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
        offset = lerp(room_lo, room_hi, rng.uniform(0.35, 0.65))
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
                lv
                for lv in _level_range(kind, n_vertebrae, u)
                if not reserved_levels(kind, lv, u) & used
            ]
            if options:
                level = int(rng.choice(options))
                used |= reserved_levels(kind, level, u)
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
