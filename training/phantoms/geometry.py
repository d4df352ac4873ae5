"""Body-frame geometry and anti-aliased sub-pixel drawing into 0-255 coverage masks."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from numpy.typing import NDArray

from training.phantoms.spec import Vertebra

_SUBPIXEL = 4  # cv2 fixed-point bits for sub-pixel polygon vertices

Points = NDArray[np.float64]
Mask = NDArray[np.uint8]


@dataclass
class BodyMods:
    """How lesions reshape one body (all zero / one for a normal body)."""

    shift: float = 0.0
    grow_top: float = 0.0
    grow_bottom: float = 0.0
    front_factor: float = 1.0
    back_factor: float = 1.0
    foramen_u: float = 1.0  # scale of the foramen under this body (1: normal)
    foramen_v: float = 1.0


def to_world(v: Vertebra, facing: int, u: Points, w: Points) -> Points:
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


def body_local(v: Vertebra, m: BodyMods) -> tuple[Points, NDArray[np.bool_]]:
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


def polygon(v: Vertebra, facing: int, u: Sequence[float], w: Sequence[float]) -> Points:
    return to_world(v, facing, np.asarray(u, float), np.asarray(w, float))


def ellipse_local(cu: float, cw: float, au: float, aw: float, n: int = 48) -> tuple[Points, Points]:
    t = np.linspace(0.0, 2.0 * math.pi, n, endpoint=False)
    return cu + au * np.cos(t), cw + aw * np.sin(t)


def _fixed(points: Points) -> NDArray[np.int32]:
    return np.round(points * (1 << _SUBPIXEL)).astype(np.int32).reshape(-1, 1, 2)


def fill(mask: Mask, points: Points, value: int = 255) -> None:
    cv2.fillPoly(mask, [_fixed(points)], value, lineType=cv2.LINE_AA, shift=_SUBPIXEL)


def line(mask: Mask, points: Points, thickness: float, closed: bool, value: int = 255) -> None:
    cv2.polylines(
        mask,
        [_fixed(points)],
        closed,
        value,
        thickness=max(1, int(round(thickness))),
        lineType=cv2.LINE_AA,
        shift=_SUBPIXEL,
    )
