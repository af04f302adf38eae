"""Drawing of the synthetic data set: one crop of a person seen by a camera. ``Pose`` (the per-image jitter),
the body coordinates, the body parts, clothes and accessories painted back to front, an occasional occluder,
and the camera's optics and sensor applied to the downsampled crop.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from hardreid.data.synthetic.cameras import Camera
from hardreid.data.synthetic.colours import Colour, _darker, _jitter
from hardreid.data.synthetic.config import SUPERSAMPLE, VIEWS, SyntheticConfig
from hardreid.data.synthetic.people import Person


@dataclass
class Pose:
    """Per-image jitter of one appearance."""

    view: str
    mirror: bool
    stride: float
    swing: float
    dx: float
    dy: float
    scale: float
    light: float


# ----------------------------------------------------------------------------- drawing


class _Body:
    """Maps body coordinates (u: horizontal, v: 0 head top .. 1 sole, both in person heights) to pixels."""

    def __init__(self, draw: ImageDraw.ImageDraw, cx: float, top: float, hp: float, sx: float) -> None:
        self.draw, self.cx, self.top, self.hp, self.sx = draw, cx, top, hp, sx

    def pt(self, u: float, v: float) -> tuple[float, float]:
        return self.cx + u * self.sx, self.top + v * self.hp

    def poly(self, points: list[tuple[float, float]], fill: Colour) -> None:
        self.draw.polygon([self.pt(u, v) for u, v in points], fill=fill)

    def ellipse(self, u: float, v: float, ru: float, rv: float, fill: Colour) -> None:
        x, y = self.pt(u, v)
        dx, dy = abs(ru * self.sx), rv * self.hp
        self.draw.ellipse([x - dx, y - dy, x + dx, y + dy], fill=fill)

    def limb(self, a: tuple[float, float], b: tuple[float, float], width: float, fill: Colour) -> None:
        """A thick segment with rounded ends (``width`` in person heights)."""
        px = max(1, int(round(width * abs(self.sx))))
        self.draw.line([self.pt(*a), self.pt(*b)], fill=fill, width=px)
        for u, v in (a, b):
            self.ellipse(u, v, width / 2, width / 2 * abs(self.sx) / self.hp, fill)


def _draw_legs(b: _Body, p: Person, pose: Pose, hip_w: float) -> None:
    v_hip = 1.0 - p.legs
    v_knee = v_hip + p.legs * 0.5
    lw = p.shoulder * 0.19
    side = pose.view == "side"
    for k, sign in enumerate((-1, 1)):
        u_hip = sign * (hip_w - lw) * (0.3 if side else 1.0)
        u_foot = u_hip + (sign * pose.stride if side else sign * pose.stride * 0.25)
        v_foot = 0.975 - (0.0 if side or k == 0 else abs(pose.stride) * 0.15)
        u_knee = (u_hip + u_foot) / 2
        leg_colour = p.lower if p.lower_kind == "trousers" else p.skin
        if side and k == 0:
            leg_colour = _darker(leg_colour, 0.85)
        b.limb((u_hip, v_hip + 0.02), (u_knee, v_knee), lw * 2, leg_colour)
        b.limb((u_knee, v_knee), (u_foot, v_foot - 0.02), lw * 1.7, leg_colour)
        if p.lower_kind == "shorts":
            b.limb((u_hip, v_hip + 0.02), (u_hip * 0.7 + u_knee * 0.3, v_knee - 0.05), lw * 2.2, p.lower)
        toe = 0.03 if side else 0.0
        b.ellipse(u_foot + toe, v_foot + 0.005, lw * 1.3 + toe, 0.018, p.shoes)


def _draw_lower_garment(b: _Body, p: Person, hip_w: float) -> None:
    v_hip = 1.0 - p.legs
    if p.lower_kind == "skirt":
        v_hem = v_hip + p.legs * 0.45
        b.poly([(-hip_w, v_hip - 0.01), (hip_w, v_hip - 0.01), (hip_w * 1.35, v_hem), (-hip_w * 1.35, v_hem)], p.lower)
    else:
        b.poly([(-hip_w, v_hip - 0.01), (hip_w, v_hip - 0.01), (hip_w, v_hip + 0.07), (-hip_w, v_hip + 0.07)], p.lower)


def _torso_points(p: Person, half: float) -> list[tuple[float, float]]:
    v_sh = p.head + 0.025
    v_end = 1.0 - p.legs + 0.035
    waist = half * 0.86
    return [
        (-half * 0.8, v_sh), (half * 0.8, v_sh), (half, v_sh + 0.035),
        (waist, v_end), (-waist, v_end), (-half, v_sh + 0.035),
    ]


def _draw_torso(canvas: Image.Image, b: _Body, p: Person, half: float) -> None:
    """Upper garment with its pattern (stripes follow the body)."""
    points = _torso_points(p, half)
    b.poly(points, p.upper)
    if p.pattern == "plain":
        return
    mask = Image.new("L", canvas.size, 0)
    ImageDraw.Draw(mask).polygon([b.pt(u, v) for u, v in points], fill=255)
    period = max(2.0, p.pattern_period * b.hp)
    ys = (np.arange(canvas.size[1])[:, None] - b.top) / period
    xs = (np.arange(canvas.size[0])[None, :] - b.cx) / period
    h = (np.floor(ys) % 2).astype(bool)
    w = (np.floor(xs + 0.5) % 2).astype(bool)
    stripes = {"hstripes": h & np.ones_like(w), "vstripes": w & np.ones_like(h), "checks": h ^ w}[p.pattern]
    keep = np.asarray(mask) * stripes
    canvas.paste(p.pattern_colour, (0, 0), Image.fromarray(keep.astype(np.uint8)))


def _draw_arm(b: _Body, p: Person, shoulder_u: float, hand_u: float, width: float, dark: float = 1.0) -> None:
    v_sh = p.head + 0.04
    v_hand = 1.0 - p.legs + 0.06
    v_elbow = (v_sh + v_hand) / 2
    u_elbow = (shoulder_u + hand_u) / 2
    sleeve = _darker(p.upper, dark)
    skin = _darker(p.skin, dark)
    b.limb((shoulder_u, v_sh), (u_elbow, v_elbow), width, sleeve)
    b.limb((u_elbow, v_elbow), (hand_u, v_hand), width * 0.85, sleeve if p.long_sleeves else skin)
    b.ellipse(hand_u, v_hand + 0.01, width * 0.5, 0.016, skin)


def _draw_head(b: _Body, p: Person, view: str) -> None:
    hd = p.head
    ru = hd * 0.37
    b.limb((0.0, hd * 0.8), (0.0, hd + 0.03), hd * 0.3, p.skin)
    if view == "back":
        b.ellipse(0.0, hd / 2, ru, hd / 2, p.hair)
        if p.hair_long:
            b.poly([(-ru, hd * 0.5), (ru, hd * 0.5), (ru * 1.05, hd + 0.06), (-ru * 1.05, hd + 0.06)], p.hair)
        return
    if p.hair_long:
        back = -ru * 0.4 if view == "side" else 0.0
        b.poly([(back - ru * 1.05, hd * 0.4), (back + ru * 1.05, hd * 0.4),
                (back + ru * 1.1, hd + 0.05), (back - ru * 1.1, hd + 0.05)], p.hair)
    b.ellipse(0.0, hd / 2, ru, hd / 2, p.hair)
    face_u = ru * 0.3 if view == "side" else 0.0
    b.ellipse(face_u, hd * 0.64, ru * (0.75 if view == "side" else 0.8), hd * 0.36, p.skin)
    eye_v = hd * 0.58
    for eu in ((ru * 0.55,) if view == "side" else (-ru * 0.4, ru * 0.4)):
        b.ellipse(eu, eye_v, ru * 0.12, hd * 0.05, (30, 25, 25))


def _draw_hat(b: _Body, p: Person, view: str) -> None:
    if p.hat is None:
        return
    hd = p.head
    ru = hd * 0.37
    b.poly([(-ru * 1.02, hd * 0.32), (-ru * 0.8, 0.0), (ru * 0.8, 0.0), (ru * 1.02, hd * 0.32)], p.hat)
    b.ellipse(0.0, hd * 0.05, ru * 0.8, hd * 0.1, p.hat)
    if view == "side":
        b.poly([(ru * 0.5, hd * 0.28), (ru * 1.6, hd * 0.33), (ru * 0.5, hd * 0.38)], _darker(p.hat, 0.8))
    elif view == "front":
        b.ellipse(0.0, hd * 0.33, ru * 1.15, hd * 0.06, _darker(p.hat, 0.8))


def _draw_backpack(b: _Body, p: Person, view: str, half: float) -> None:
    """Backpack drawn over the body: full pack from behind, straps from the front."""
    if p.backpack is None:
        return
    v_sh = p.head + 0.03
    v_hip = 1.0 - p.legs
    if view == "back":
        w = half * 0.75
        b.poly([(-w, v_sh + 0.02), (w, v_sh + 0.02), (w * 1.05, v_hip - 0.02), (-w * 1.05, v_hip - 0.02)], p.backpack)
        b.poly([(-w * 0.7, v_hip - 0.12), (w * 0.7, v_hip - 0.12), (w * 0.7, v_hip - 0.04), (-w * 0.7, v_hip - 0.04)],
               _darker(p.backpack, 0.8))
    elif view == "front":
        for s in (-1, 1):
            b.limb((s * half * 0.5, v_sh), (s * half * 0.55, v_sh + 0.16), half * 0.22, p.backpack)
    else:
        b.limb((half * 0.1, v_sh), (-half * 0.3, v_sh + 0.17), half * 0.3, _darker(p.backpack, 0.9))


def _draw_backpack_side(b: _Body, p: Person, half: float) -> None:
    """Pack seen from the side, behind the torso."""
    if p.backpack is None:
        return
    v_sh = p.head + 0.04
    v_hip = 1.0 - p.legs
    b.poly([(-half - 0.09, v_sh + 0.02), (-half * 0.5, v_sh), (-half * 0.5, v_hip - 0.01), (-half - 0.1, v_hip - 0.03)],
           p.backpack)


def _draw_bag(b: _Body, p: Person, view: str, half: float) -> None:
    if p.bag is None:
        return
    side = p.bag_side * (-1 if view == "back" else 1)
    v_sh = p.head + 0.03
    v_hip = 1.0 - p.legs
    if view == "side":
        bag_u = -half * 0.2
        b.limb((0.0, v_sh), (bag_u, v_hip - 0.02), 0.012, _darker(p.bag, 0.7))
    else:
        bag_u = side * (half + 0.035)
        b.limb((-side * half * 0.6, v_sh), (bag_u, v_hip - 0.02), 0.012, _darker(p.bag, 0.7))
    b.poly([(bag_u - 0.055, v_hip - 0.03), (bag_u + 0.055, v_hip - 0.03),
            (bag_u + 0.06, v_hip + 0.08), (bag_u - 0.06, v_hip + 0.08)], p.bag)


def _draw_person(canvas: Image.Image, b: _Body, p: Person, pose: Pose) -> None:
    """Paint the person in back-to-front order."""
    view = pose.view
    side = view == "side"
    half = p.shoulder / 2 * (0.62 if side else 1.0)
    hip_w = half * (0.9 if side else 0.82)
    arm_w = p.shoulder * 0.15
    if side:
        _draw_arm(b, p, 0.0, -pose.swing, arm_w, dark=0.8)
        _draw_backpack_side(b, p, half)
    _draw_legs(b, p, pose, hip_w)
    _draw_lower_garment(b, p, hip_w)
    if not side:
        for s in (-1, 1):
            _draw_arm(b, p, s * (half - arm_w * 0.5), s * (half + arm_w * 0.2) + s * abs(pose.swing) * 0.3, arm_w)
    _draw_torso(canvas, b, p, half)
    _draw_backpack(b, p, view, half)
    _draw_bag(b, p, view, half)
    if side:
        _draw_arm(b, p, 0.0, pose.swing, arm_w)
    _draw_head(b, p, view)
    _draw_hat(b, p, view)


def _draw_occluder(draw: ImageDraw.ImageDraw, rng: np.random.Generator, cam: Camera, w: int, h: int) -> None:
    """A rectangle of background-like colour over part of the body."""
    colour = _jitter(rng, cam.floor_colour if rng.random() < 0.5 else cam.wall_colour, 20.0)
    kind = int(rng.integers(3))
    if kind == 0:  # something low in front: car, bench, other people
        y0 = h * rng.uniform(0.55, 0.8)
        draw.rectangle([-1, y0, w + 1, h + 1], fill=colour)
    elif kind == 1:  # from the left or right
        x = w * rng.uniform(0.25, 0.45)
        box = [-1, h * rng.uniform(0.0, 0.4), x, h + 1] if rng.random() < 0.5 else [w - x, h * rng.uniform(0.0, 0.4), w + 1, h + 1]
        draw.rectangle(box, fill=colour)
    else:  # a post or another pedestrian crossing
        x = w * rng.uniform(0.2, 0.6)
        draw.rectangle([x, -1, x + w * rng.uniform(0.15, 0.3), h + 1], fill=colour)


def _pose(rng: np.random.Generator, cam: Camera) -> Pose:
    view = VIEWS[int(rng.choice(3, p=cam.view_probs))]
    return Pose(
        view=view,
        mirror=bool(rng.random() < cam.mirror_prob),
        stride=rng.uniform(-0.12, 0.12),
        swing=rng.uniform(-0.07, 0.07),
        dx=rng.normal(0.0, 0.04),
        dy=rng.normal(0.0, 0.015),
        scale=rng.uniform(0.95, 1.05),
        light=rng.uniform(0.94, 1.06),
    )


def _finish(img: Image.Image, rng: np.random.Generator, cam: Camera, pose: Pose) -> Image.Image:
    """Camera optics and sensor: blur, gain, colour cast, gamma, saturation, noise."""
    if cam.blur > 0.05:
        img = img.filter(ImageFilter.GaussianBlur(cam.blur))
    x = np.asarray(img, dtype=np.float32) / 255.0
    grey = x.mean(axis=2, keepdims=True)
    x = grey + (x - grey) * cam.saturation
    x = np.clip(x, 0.0, 1.0) ** cam.gamma
    x = x * (cam.gain * pose.light) * np.asarray(cam.cast, np.float32)
    x = x * 255.0 + rng.normal(0.0, cam.noise, x.shape).astype(np.float32)
    return Image.fromarray(np.clip(x + 0.5, 0, 255).astype(np.uint8))


def _render(person: Person, cam: Camera, cfg: SyntheticConfig, rng: np.random.Generator) -> Image.Image:
    """One crop of ``person`` seen by ``cam`` (``rng`` drives pose, framing and noise)."""
    w, h = cfg.width * SUPERSAMPLE, cfg.height * SUPERSAMPLE
    pose = _pose(rng, cam)
    x0 = int(rng.integers(0, cam.background.size[0] - w + 1))
    canvas = cam.background.crop((x0, 0, x0 + w, h))
    draw = ImageDraw.Draw(canvas)
    hp = h * cam.scale * person.height * pose.scale
    top = h * (cam.top + pose.dy) + (h * cam.scale - hp) * 0.6
    top = min(top, h - hp - 1)
    cx = w * (0.5 + pose.dx)
    sx = hp * cam.squeeze * cfg.person_width * (-1.0 if pose.mirror else 1.0)
    shadow_y = top + hp
    half_shadow = hp * 0.16 * cfg.person_width
    draw.ellipse([cx - half_shadow, shadow_y - hp * 0.02, cx + half_shadow, shadow_y + hp * 0.02],
                 fill=_darker(cam.floor_colour, 0.55))
    _draw_person(canvas, _Body(draw, cx, top, hp, sx), person, pose)
    if rng.random() < 0.2:
        _draw_occluder(draw, rng, cam, w, h)
    small = canvas.resize((cfg.width, cfg.height), Image.Resampling.BOX)
    return _finish(small, rng, cam, pose)
