"""The normal anatomy: vertebral bodies with endplates, the sacrum, posterior elements, foramina.

Bodies take the lesion reshaping (`BodyMods`) as input, so a collapse, a slip or
a narrowed disc changes the outline without any lesion code here.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from training.phantoms.geometry import (
    BodyMods,
    Mask,
    Points,
    body_local,
    ellipse_local,
    fill,
    line,
    polygon,
    to_world,
)
from training.phantoms.spec import LATERAL, PhantomSpec, Vertebra


def draw_bodies(spec: PhantomSpec, mods: list[BodyMods], layers: dict[str, Mask]) -> None:
    for v, m in zip(spec.vertebrae, mods, strict=True):
        local, endplate = body_local(v, m)
        outline = to_world(v, spec.facing, local[:, 0], local[:, 1])
        fill(layers["bone"], outline)
        cortex = max(3.0, 0.03 * v.width)
        line(layers["cortex"], outline, cortex, closed=True)
        half = len(outline) // 2  # thicker, brighter endplates (top half, bottom half)
        top, bottom = np.flatnonzero(endplate[:half]), half + np.flatnonzero(endplate[half:])
        for part, grown in ((top, m.grow_top), (bottom, m.grow_bottom)):
            line(layers["cortex"], outline[part], cortex * 1.8, closed=False)
            if grown:  # degenerated disc: sclerotic band along the endplate
                line(layers["dense"], outline[part], 0.14 * v.h_back, closed=False)
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
        outline = polygon(sac, spec.facing, u, w)
        fill(layers["bone"], outline)
        line(layers["cortex"], outline, max(3.0, 0.03 * sac.width), closed=True)


def foramen_local(v: Vertebra, m: BodyMods) -> tuple[Points, Points]:
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
    return ellipse_local(cu_s, cw_s, au_s, aw_s)


def draw_posterior(spec: PhantomSpec, mods: list[BodyMods], layers: dict[str, Mask]) -> None:
    post = layers["posterior"]
    n = len(spec.vertebrae)
    for i, v in enumerate(spec.vertebrae):
        hw, hh = v.width / 2, v.h_back / 2
        if spec.view == LATERAL:
            pedicle, pillar = 0.36 * v.width, 0.3 * v.width
            back = -hw - pedicle - pillar
            reach = hh + (v.disc_below + 0.25 * hh if i < n - 1 else 0.4 * v.disc_below)
            fill(
                post,
                polygon(
                    v,
                    spec.facing,
                    [-hw + 4, back + 6, back, -hw + 4],
                    [-hh * 0.92, -hh * 1.05, reach, reach],
                ),
            )
            spin = [back + 10, back - 0.55 * v.width, back - 0.62 * v.width, back + 10]
            fill(post, polygon(v, spec.facing, spin, [-hh * 0.55, -hh * 0.05, hh * 0.45, hh * 0.7]))
        else:
            for side in (-1, 1):
                fill(
                    post,
                    polygon(
                        v,
                        spec.facing,
                        [side * hw * 0.85, side * hw * 1.75, side * hw * 1.75, side * hw * 0.85],
                        [-hh * 0.7, -hh * 0.5, -hh * 0.25, -hh * 0.15],
                    ),
                )
                eu, ew = ellipse_local(side * hw * 0.62, -hh * 0.35, hw * 0.17, hh * 0.3)
                line(post, to_world(v, spec.facing, eu, ew), max(4.0, 0.035 * v.width), True)
            fill(
                post,
                polygon(
                    v,
                    spec.facing,
                    [-hw * 0.6, hw * 0.6, hw * 0.2, -hw * 0.2],
                    [-hh * 0.1, -hh * 0.1, hh * 0.9, hh * 0.9],
                ),
            )
            su, sw = ellipse_local(0.0, hh * 0.55, hw * 0.12, hh * 0.55)
            fill(post, to_world(v, spec.facing, su, sw))
    if spec.view == LATERAL:
        for v, m in zip(spec.vertebrae[:-1], mods[:-1], strict=True):  # carve the foramina
            fu, fw = foramen_local(v, m)
            fill(post, to_world(v, spec.facing, fu, fw), value=0)
