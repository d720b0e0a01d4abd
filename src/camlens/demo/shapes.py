"""``shapes``: a procedurally generated image set with ground-truth object masks.

Six classes of hard-edged shapes drawn at a random position, scale, rotation and colour over a
textured, noisy background with clutter that belongs to no class (soft blobs, thin lines, small
specks), so a classifier has to look at the object. Every image comes from its own seeded
generator, so ``shapes(n, seed)`` is deterministic and image i does not depend on n.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "ring")


def _polygon(u: np.ndarray, v: np.ndarray, sides: int, apothem: float) -> np.ndarray:
    """Inside a regular polygon with ``sides`` sides and the given apothem, centred at 0."""
    inside = np.ones(u.shape, dtype=bool)
    for k in range(sides):
        a = 2 * math.pi * k / sides + math.pi / 2
        inside &= u * math.cos(a) + v * math.sin(a) <= apothem
    return inside


def _star(u: np.ndarray, v: np.ndarray, outer: float, inner: float, points: int = 5) -> np.ndarray:
    rho = np.hypot(u, v)
    phi = np.mod(np.arctan2(v, u), 2 * math.pi / points)
    half = math.pi / points
    phi = np.where(phi > half, 2 * half - phi, phi)  # fold onto [0, pi/points]
    # Boundary: the segment from the outer vertex (outer, 0) to the inner one at angle pi/points.
    p1 = np.array([inner * math.cos(half), inner * math.sin(half)])
    p0 = np.array([outer, 0.0])
    x, y = rho * np.cos(phi), rho * np.sin(phi)
    cross = (p1[0] - p0[0]) * (y - p0[1]) - (p1[1] - p0[1]) * (x - p0[0])
    return cross >= 0


def shape_mask(name: str, u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
    """Pixels of shape ``name`` of radius ``r`` in rotated local coordinates (u, v)."""
    rho = np.hypot(u, v)
    if name == "circle":
        return rho <= r
    if name == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.78 * r
    if name == "triangle":
        return _polygon(u, v, 3, 0.55 * r)
    if name == "star":
        return _star(u, v, r * 1.05, 0.45 * r)
    if name == "cross":
        w = 0.3 * r
        return ((np.abs(u) <= w) & (np.abs(v) <= r)) | ((np.abs(v) <= w) & (np.abs(u) <= r))
    if name == "ring":
        return (rho <= r) & (rho >= 0.58 * r)
    raise ValueError(f"unknown shape {name!r}; known: {', '.join(CLASSES)}")


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A textured background: smooth colour gradient + low-frequency texture + pixel noise."""
    base = rng.uniform(0.15, 0.85, size=3)
    coarse = rng.normal(0.0, 0.12, size=(3, 6, 6))
    tex = torch.nn.functional.interpolate(
        torch.from_numpy(coarse)[None], size=(size, size), mode="bicubic", align_corners=False
    )[0].numpy()
    yy, xx = np.mgrid[0:size, 0:size] / size
    grad = rng.normal(0.0, 0.1, size=(3, 1, 1)) * (xx - 0.5) + rng.normal(0.0, 0.1, (3, 1, 1)) * (
        yy - 0.5
    )
    return base[:, None, None] + tex + grad


def _clutter(rng: np.random.Generator, img: np.ndarray, xx: np.ndarray, yy: np.ndarray) -> None:
    """Soft Gaussian blobs and thin line segments: distractors that belong to no class."""
    size = img.shape[-1]
    for _ in range(rng.integers(2, 5)):
        cx, cy = rng.uniform(0, size, 2)
        sx, sy = rng.uniform(0.04, 0.12, 2) * size
        blob = np.exp(-(((xx - cx) / sx) ** 2 + ((yy - cy) / sy) ** 2) / 2)
        colour = rng.uniform(0, 1, 3)[:, None, None]
        alpha = rng.uniform(0.4, 0.8)
        img[:] = img * (1 - alpha * blob) + colour * alpha * blob
    for _ in range(rng.integers(1, 4)):
        x0, y0, x1, y1 = rng.uniform(0, size, 4)
        width = rng.uniform(0.6, 1.4)
        dx, dy = x1 - x0, y1 - y0
        t = np.clip(((xx - x0) * dx + (yy - y0) * dy) / (dx * dx + dy * dy + 1e-9), 0, 1)
        dist = np.hypot(xx - (x0 + t * dx), yy - (y0 + t * dy))
        line = dist <= width
        img[:, line] = rng.uniform(0, 1, 3)[:, None]


def _place(rng, size, radius, taken, xx, yy):
    for _ in range(50):
        cx, cy = rng.uniform(radius + 1, size - radius - 1, 2)
        if all(math.hypot(cx - ox, cy - oy) > radius + orad + 2 for ox, oy, orad in taken):
            return cx, cy
    return None


def draw(
    seed: int, label: int, size: int = 96, instances: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """One image (3, size, size) in [0, 1] with ``instances`` objects of class ``label``, and
    the mask (size, size) of their pixels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    img = _background(rng, size)
    _clutter(rng, img, xx, yy)
    mask = np.zeros((size, size), dtype=bool)
    taken: list[tuple[float, float, float]] = []
    lo, hi = (0.12, 0.24) if instances == 1 else (0.1, 0.17)
    for _ in range(instances):
        radius = rng.uniform(lo, hi) * size
        spot = _place(rng, size, radius, taken, xx, yy)
        if spot is None:  # no room left: a smaller object where it fits
            radius *= 0.7
            spot = _place(rng, size, radius, taken, xx, yy) or (size / 2, size / 2)
        cx, cy = spot
        taken.append((cx, cy, radius))
        theta = rng.uniform(0, 2 * math.pi)
        du, dv = xx - cx, yy - cy
        u = du * math.cos(theta) + dv * math.sin(theta)
        v = -du * math.sin(theta) + dv * math.cos(theta)
        obj = shape_mask(CLASSES[label], u, v, radius)
        colour = rng.uniform(0, 1, 3)
        local = img[:, obj].mean(axis=1) if obj.any() else np.full(3, 0.5)
        while np.abs(colour - local).max() < 0.35:  # keep the object visible
            colour = rng.uniform(0, 1, 3)
        img[:, obj] = colour[:, None] + rng.normal(0, 0.03, size=(3, int(obj.sum())))
        mask |= obj
    img += rng.normal(0.0, 0.04, size=img.shape)
    return np.clip(img, 0.0, 1.0).astype(np.float32), mask


def shapes(
    n: int, seed: int = 0, size: int = 96, instances: int = 1
) -> tuple[Tensor, Tensor, Tensor]:
    """Generate ``n`` images of the shapes benchmark.

    Returns images (n, 3, size, size) float32 in [0, 1], labels (n,) long in
    [0, len(CLASSES)), and masks (n, size, size) bool: the pixels of the labelled object(s).
    ``instances=2`` puts two objects of the same class in each image (the mask covers both).
    Labels cycle through the classes in a seeded random order, so every class is equally common.
    """
    if n < 0 or size < 16 or instances < 1:
        raise ValueError(f"need n >= 0, size >= 16, instances >= 1; got {n}, {size}, {instances}")
    master = np.random.default_rng([seed, size, instances])
    seeds = master.integers(0, 2**63 - 1, size=n)
    labels = master.permutation(np.arange(n) % len(CLASSES))
    images = np.empty((n, 3, size, size), dtype=np.float32)
    masks = np.empty((n, size, size), dtype=bool)
    for i in range(n):
        images[i], masks[i] = draw(int(seeds[i]), int(labels[i]), size, instances)
    return torch.from_numpy(images), torch.from_numpy(labels).long(), torch.from_numpy(masks)
