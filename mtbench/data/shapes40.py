"""shapes40: a procedurally generated, in-memory stand-in for CelebA's 40 binary attributes.

Every image is rendered from sampled latent variables (a background with brightness, tint and
texture; 1-3 non-overlapping objects, each with a shape, colour, size ``r`` and centre ``(x, y)``
as fractions of the image side, y downwards; Gaussian pixel noise), and each of the 40 labels is
a predicate over those latents, never over pixels: labels are exact and the same for every
``image_size``. Nothing is read from or written to disk. The sampling probabilities are the
constants below; docs/tasks/shapes40.md describes the whole process.

:data:`ATTRIBUTES` lists the 40 attributes in order, :data:`ATTRIBUTE_DOCS` defines each in one
line; :data:`NESTED_PAIRS` are ``(child, parent)`` pairs where the child implies the parent,
:data:`EXCLUSIVE_PAIRS` pairs never both true. Splits: ``SeedSequence(seed).spawn(3)`` gives one
PCG64 stream per split (train, val, test), so a seed gives the same data bit for bit.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from mtbench.data.base import TaskSpec

__all__ = [
    "ATTRIBUTES",
    "ATTRIBUTE_DOCS",
    "NESTED_PAIRS",
    "EXCLUSIVE_PAIRS",
    "Split",
    "Shapes40",
    "make_shapes40",
]

# --------------------------------------------------------------------------- constants

_SHAPES = ("circle", "square", "triangle", "ring", "plus", "bar")
_SHAPE_P = (0.24, 0.20, 0.20, 0.12, 0.12, 0.12)
_CIRCLE, _SQUARE, _TRIANGLE, _RING, _PLUS, _BAR = range(6)
# radius of the circle around the centre that contains the shape, in units of r
_BOUND = np.array([1.0, 0.85 * math.sqrt(2.0), math.sqrt(1.0 + 0.8**2), 1.0, math.sqrt(1.09), math.sqrt(1.09)])
# exact area of each shape, in units of r**2
_AREA = np.array([math.pi, 1.7**2, 0.5 * 2.0 * 1.8, math.pi * (1 - 0.55**2), 2 * 2 * 0.6 - 0.6**2, 2 * 0.6])

_COLORS = ("red", "blue", "green", "yellow", "purple", "cyan")
_COLOR_P = (0.24, 0.22, 0.20, 0.16, 0.10, 0.08)
_RED, _BLUE, _GREEN, _YELLOW, _PURPLE, _CYAN = range(6)
_RGB = np.array(
    [
        [0.86, 0.16, 0.14],
        [0.16, 0.30, 0.90],
        [0.15, 0.70, 0.20],
        [0.95, 0.85, 0.15],
        [0.60, 0.20, 0.80],
        [0.15, 0.80, 0.85],
    ],
    dtype=np.float32,
)

_N_OBJ_P = (0.35, 0.40, 0.25)
_MAX_OBJ = 3
_R_MIN, _R_MAX = 0.07, 0.19
_LARGE, _SMALL = 0.15, 0.09
_GAP = 0.03  # minimum distance between bounding circles
_BORDER = 0.02  # minimum distance between a bounding circle and the image border
_BG_KIND_P = (0.72, 0.21, 0.07)  # flat, gradient, striped
_TINT_P = (0.60, 0.20, 0.20)  # neutral, warm, cool
_TINT_RGB = np.array([[0.0, 0.0, 0.0], [0.09, 0.02, -0.09], [-0.09, 0.0, 0.09]], dtype=np.float32)
_NOISE_SIGMA = 0.03
_CLUTTER_AREA = 0.10  # total object area (fraction of the image) below which a scene is uncluttered
_CHUNK = 2048  # images rendered at a time

ATTRIBUTE_DOCS: dict[str, str] = {
    "bright_background": "background brightness L > 0.6",
    "dark_background": "background brightness L < 0.35",
    "warm_background": "background tinted warm (more red, less blue)",
    "cool_background": "background tinted cool (more blue, less red)",
    "flat_background": "background is a single flat colour (no gradient, no stripes)",
    "gradient_background": "background has a linear brightness ramp",
    "striped_background": "background has a striped texture",
    "single_object": "exactly one object",
    "exactly_two_objects": "exactly two objects",
    "three_objects": "exactly three objects",
    "multiple_objects": "two or more objects",
    "has_circle": "some object is a (filled) circle",
    "has_square": "some object is a square",
    "has_triangle": "some object is a triangle",
    "has_ring": "some object is a ring (hollow circle)",
    "has_plus": "some object is a plus sign",
    "has_bar": "some object is a bar (horizontal or vertical)",
    "has_round_shape": "some object is a circle or a ring",
    "has_angular_shape": "some object is a square, triangle, plus or bar",
    "has_red": "some object is red",
    "has_blue": "some object is blue",
    "has_green": "some object is green",
    "has_yellow": "some object is yellow",
    "has_purple": "some object is purple",
    "has_red_circle": "some object is a red circle",
    "has_large_circle": "some object is a large circle (r >= 0.15)",
    "has_large_red_circle": "some object is a large red circle",
    "has_blue_square": "some object is a blue square",
    "has_large_object": "some object is large (r >= 0.15)",
    "has_small_object": "some object is small (r < 0.09)",
    "all_small": "every object is small",
    "all_same_color": "two or more objects, all of the same colour",
    "all_same_shape": "two or more objects, all of the same shape",
    "largest_left": "the largest object's centre has x < 0.4",
    "largest_right": "the largest object's centre has x > 0.6",
    "object_near_top": "some object's centre has y < 0.3 (top 30% of the image)",
    "red_above_blue": "some red object's centre is above some blue object's centre",
    "largest_is_circle": "the largest object is a circle",
    "horizontal_pair": "two objects whose centres differ by less than 0.06 in y",
    "low_clutter": "objects cover less than 10% of the image in total",
}

ATTRIBUTES: tuple[str, ...] = tuple(ATTRIBUTE_DOCS)

NESTED_PAIRS: tuple[tuple[str, str], ...] = (
    ("exactly_two_objects", "multiple_objects"),
    ("three_objects", "multiple_objects"),
    ("has_circle", "has_round_shape"),
    ("has_ring", "has_round_shape"),
    ("has_square", "has_angular_shape"),
    ("has_triangle", "has_angular_shape"),
    ("has_plus", "has_angular_shape"),
    ("has_bar", "has_angular_shape"),
    ("has_red_circle", "has_circle"),
    ("has_red_circle", "has_red"),
    ("has_large_circle", "has_circle"),
    ("has_large_circle", "has_large_object"),
    ("has_large_red_circle", "has_red_circle"),
    ("has_large_red_circle", "has_large_circle"),
    ("has_blue_square", "has_square"),
    ("has_blue_square", "has_blue"),
    ("all_small", "has_small_object"),
    ("all_small", "low_clutter"),
    ("all_same_color", "multiple_objects"),
    ("all_same_shape", "multiple_objects"),
    ("horizontal_pair", "multiple_objects"),
    ("largest_is_circle", "has_circle"),
    ("red_above_blue", "has_red"),
    ("red_above_blue", "has_blue"),
    ("red_above_blue", "multiple_objects"),
)

EXCLUSIVE_PAIRS: tuple[tuple[str, str], ...] = (
    ("bright_background", "dark_background"),
    ("warm_background", "cool_background"),
    ("flat_background", "gradient_background"),
    ("flat_background", "striped_background"),
    ("gradient_background", "striped_background"),
    ("single_object", "exactly_two_objects"),
    ("single_object", "three_objects"),
    ("exactly_two_objects", "three_objects"),
    ("single_object", "multiple_objects"),
    ("largest_left", "largest_right"),
    ("all_small", "has_large_object"),
)


# --------------------------------------------------------------------------- public types


@dataclass
class Split:
    """One split: uint8 images [N, 3, H, W] and uint8 labels [N, 40] in {0, 1}."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.images.shape[0])


@dataclass
class Shapes40:
    """The three splits and the attribute names (the column order of ``labels``)."""

    attribute_names: list[str]
    train: Split
    val: Split
    test: Split


# --------------------------------------------------------------------------- latents


@dataclass
class _Latents:
    bg_level: np.ndarray  # [N] float
    bg_kind: np.ndarray  # [N] int: 0 flat, 1 gradient, 2 striped
    tint: np.ndarray  # [N] int: 0 neutral, 1 warm, 2 cool
    grad_angle: np.ndarray  # [N]
    grad_amp: np.ndarray  # [N]
    stripe_angle: np.ndarray  # [N]
    stripe_period: np.ndarray  # [N]
    active: np.ndarray  # [N, 3] bool
    shape: np.ndarray  # [N, 3] int
    vertical: np.ndarray  # [N, 3] bool (bars only)
    color: np.ndarray  # [N, 3] int
    rgb: np.ndarray  # [N, 3, 3] float32, jittered colour of each object
    r: np.ndarray  # [N, 3]
    x: np.ndarray  # [N, 3]
    y: np.ndarray  # [N, 3]


def _conflicts(active, bound, x, y) -> np.ndarray:
    """[N] bool: some pair of active objects has bounding circles closer than ``_GAP``."""
    bad = np.zeros(active.shape[0], dtype=bool)
    for i in range(_MAX_OBJ):
        for j in range(i + 1, _MAX_OBJ):
            d2 = (x[:, i] - x[:, j]) ** 2 + (y[:, i] - y[:, j]) ** 2
            need = bound[:, i] + bound[:, j] + _GAP
            bad |= active[:, i] & active[:, j] & (d2 < need * need)
    return bad


def _place(rng, bound, rows) -> tuple[np.ndarray, np.ndarray]:
    lo = bound[rows] + _BORDER
    span = 1.0 - 2.0 * lo
    x = lo + span * rng.random(lo.shape)
    y = lo + span * rng.random(lo.shape)
    return x, y


def _sample_latents(rng: np.random.Generator, n: int) -> _Latents:
    bg_level = rng.uniform(0.1, 0.9, n)
    bg_kind = rng.choice(3, size=n, p=_BG_KIND_P)
    tint = rng.choice(3, size=n, p=_TINT_P)
    grad_angle = rng.uniform(0.0, 2.0 * math.pi, n)
    grad_amp = rng.uniform(0.30, 0.50, n)
    stripe_angle = rng.integers(0, 4, n) * (math.pi / 4.0)
    stripe_period = rng.uniform(0.12, 0.20, n)

    n_obj = rng.choice(np.arange(1, _MAX_OBJ + 1), size=n, p=_N_OBJ_P)
    active = np.arange(_MAX_OBJ)[None, :] < n_obj[:, None]
    shape = rng.choice(len(_SHAPES), size=(n, _MAX_OBJ), p=_SHAPE_P)
    vertical = rng.random((n, _MAX_OBJ)) < 0.5
    color = rng.choice(len(_COLORS), size=(n, _MAX_OBJ), p=_COLOR_P)
    rgb = _RGB[color] + rng.uniform(-0.06, 0.06, (n, _MAX_OBJ, 3)).astype(np.float32)
    r = rng.uniform(_R_MIN, _R_MAX, (n, _MAX_OBJ))
    bound = _BOUND[shape] * r
    x, y = _place(rng, bound, slice(None))

    # rejection sampling of non-overlapping layouts, only for the scenes that conflict
    for it in range(60):
        rows = np.flatnonzero(_conflicts(active, bound, x, y))
        if rows.size == 0:
            break
        if it % 10 == 9:
            r[rows] = rng.uniform(_R_MIN, _R_MAX, (rows.size, _MAX_OBJ))
            bound[rows] = _BOUND[shape[rows]] * r[rows]
        x[rows], y[rows] = _place(rng, bound, rows)
    # scenes that still do not fit lose their last objects
    for k in range(_MAX_OBJ - 1, 0, -1):
        bad = _conflicts(active, bound, x, y)
        active[bad, k] = False

    return _Latents(
        bg_level, bg_kind, tint, grad_angle, grad_amp, stripe_angle, stripe_period,
        active, shape, vertical, color, rgb, r, x, y,
    )  # fmt: skip


def _attributes(z: _Latents) -> np.ndarray:
    """Evaluate the 40 predicates on the latents: uint8 [N, 40]."""
    act = z.active
    n_obj = act.sum(1)
    rows = np.arange(act.shape[0])

    def some(mask: np.ndarray) -> np.ndarray:
        return (mask & act).any(1)

    def every(mask: np.ndarray) -> np.ndarray:
        return (mask | ~act).all(1)

    shape, color = z.shape, z.color
    large = z.r >= _LARGE
    small = z.r < _SMALL
    circle, red, blue = shape == _CIRCLE, color == _RED, color == _BLUE
    largest = np.argmax(np.where(act, z.r, -1.0), axis=1)

    red_above_blue = np.zeros(act.shape[0], dtype=bool)
    horizontal_pair = np.zeros(act.shape[0], dtype=bool)
    for i in range(_MAX_OBJ):
        for j in range(_MAX_OBJ):
            if i == j:
                continue
            both = act[:, i] & act[:, j]
            red_above_blue |= both & red[:, i] & blue[:, j] & (z.y[:, i] < z.y[:, j])
            if i < j:
                horizontal_pair |= both & (np.abs(z.y[:, i] - z.y[:, j]) < 0.06)

    area = np.where(act, _AREA[shape] * z.r**2, 0.0).sum(1)

    a = {
        "bright_background": z.bg_level > 0.6,
        "dark_background": z.bg_level < 0.35,
        "warm_background": z.tint == 1,
        "cool_background": z.tint == 2,
        "flat_background": z.bg_kind == 0,
        "gradient_background": z.bg_kind == 1,
        "striped_background": z.bg_kind == 2,
        "single_object": n_obj == 1,
        "exactly_two_objects": n_obj == 2,
        "three_objects": n_obj == 3,
        "multiple_objects": n_obj >= 2,
        "has_circle": some(circle),
        "has_square": some(shape == _SQUARE),
        "has_triangle": some(shape == _TRIANGLE),
        "has_ring": some(shape == _RING),
        "has_plus": some(shape == _PLUS),
        "has_bar": some(shape == _BAR),
        "has_round_shape": some(circle | (shape == _RING)),
        "has_angular_shape": some((shape != _CIRCLE) & (shape != _RING)),
        "has_red": some(red),
        "has_blue": some(blue),
        "has_green": some(color == _GREEN),
        "has_yellow": some(color == _YELLOW),
        "has_purple": some(color == _PURPLE),
        "has_red_circle": some(red & circle),
        "has_large_circle": some(large & circle),
        "has_large_red_circle": some(large & red & circle),
        "has_blue_square": some(blue & (shape == _SQUARE)),
        "has_large_object": some(large),
        "has_small_object": some(small),
        "all_small": every(small),
        "all_same_color": (n_obj >= 2) & every(color == color[:, :1]),
        "all_same_shape": (n_obj >= 2) & every(shape == shape[:, :1]),
        "largest_left": z.x[rows, largest] < 0.4,
        "largest_right": z.x[rows, largest] > 0.6,
        "object_near_top": some(z.y < 0.3),
        "red_above_blue": red_above_blue,
        "largest_is_circle": shape[rows, largest] == _CIRCLE,
        "horizontal_pair": horizontal_pair,
        "low_clutter": area < _CLUTTER_AREA,
    }
    assert tuple(a) == ATTRIBUTES
    return np.stack([a[name] for name in ATTRIBUTES], axis=1).astype(np.uint8)


# --------------------------------------------------------------------------- rendering


def _shape_mask(kind: int, dx: np.ndarray, dy: np.ndarray, r: np.ndarray, vertical: np.ndarray) -> np.ndarray:
    """Hard mask [m, S, S] of one shape kind; dx, dy [m, S, S] offsets from the centres, r [m, 1, 1]."""
    if kind == _CIRCLE:
        return dx * dx + dy * dy <= r * r
    if kind == _RING:
        d2 = dx * dx + dy * dy
        return (d2 <= r * r) & (d2 >= (0.55 * r) ** 2)
    ax, ay = np.abs(dx), np.abs(dy)
    if kind == _SQUARE:
        return np.maximum(ax, ay) <= 0.85 * r
    if kind == _TRIANGLE:  # apex up at -r, base at +0.8r with half-width r
        return (dy >= -r) & (dy <= 0.8 * r) & (ax <= (dy + r) / 1.8)
    arm_h = (ax <= r) & (ay <= 0.3 * r)
    arm_v = (ay <= r) & (ax <= 0.3 * r)
    if kind == _PLUS:
        return arm_h | arm_v
    return np.where(vertical, arm_v, arm_h)  # bar


def _render(z: _Latents, lo: int, hi: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Render images lo..hi-1 as uint8 [m, 3, S, S]."""
    m = hi - lo
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    gx, gy = c[None, None, :], c[None, :, None]  # [1, 1, S] and [1, S, 1]

    # background, one grey level per image, then ramps / stripes, then tint
    level = z.bg_level[lo:hi].astype(np.float32)[:, None, None]
    grey = np.broadcast_to(level, (m, size, size)).copy()
    kind = z.bg_kind[lo:hi]
    g = np.flatnonzero(kind == 1)
    if g.size:
        ang = z.grad_angle[lo:hi][g].astype(np.float32)[:, None, None]
        amp = z.grad_amp[lo:hi][g].astype(np.float32)[:, None, None]
        grey[g] += amp * ((gx - 0.5) * np.cos(ang) + (gy - 0.5) * np.sin(ang))
    s = np.flatnonzero(kind == 2)
    if s.size:
        ang = z.stripe_angle[lo:hi][s].astype(np.float32)[:, None, None]
        per = z.stripe_period[lo:hi][s].astype(np.float32)[:, None, None]
        proj = gx * np.cos(ang) + gy * np.sin(ang)
        grey[s] += 0.10 * np.where(np.sin(2.0 * np.pi * proj / per) >= 0, 1.0, -1.0).astype(np.float32)
    img = grey[:, None, :, :] + _TINT_RGB[z.tint[lo:hi]][:, :, None, None]

    # objects, painted slot by slot and shape kind by shape kind
    for k in range(_MAX_OBJ):
        act = z.active[lo:hi, k]
        shp = z.shape[lo:hi, k]
        for kind_id in range(len(_SHAPES)):
            idx = np.flatnonzero(act & (shp == kind_id))
            if idx.size == 0:
                continue
            rows = lo + idx
            r = z.r[rows, k].astype(np.float32)[:, None, None]
            dx = gx - z.x[rows, k].astype(np.float32)[:, None, None]
            dy = gy - z.y[rows, k].astype(np.float32)[:, None, None]
            vert = z.vertical[rows, k][:, None, None]
            mask = _shape_mask(kind_id, dx, dy, r, vert)
            col = z.rgb[rows, k][:, :, None, None]
            img[idx] = np.where(mask[:, None], col, img[idx])

    img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(_NOISE_SIGMA)
    np.clip(img * 255.0 + 0.5, 0.0, 255.0, out=img)
    return img.astype(np.uint8)


def _make_split(seq: np.random.SeedSequence, n: int, size: int) -> Split:
    latent_seq, noise_seq = seq.spawn(2)
    z = _sample_latents(np.random.Generator(np.random.PCG64(latent_seq)), n)
    labels = _attributes(z)
    noise_rng = np.random.Generator(np.random.PCG64(noise_seq))
    images = np.empty((n, 3, size, size), dtype=np.uint8)
    for lo in range(0, n, _CHUNK):
        hi = min(n, lo + _CHUNK)
        images[lo:hi] = _render(z, lo, hi, size, noise_rng)
    return Split(images=torch.from_numpy(images), labels=torch.from_numpy(labels))


# --------------------------------------------------------------------------- entry point


def check_options(cfg) -> TaskSpec:
    """Check the ``task=shapes40`` options (no data is built); a one-line error names the option."""
    from mtbench.data.base import TaskSpec, binary_columns, check_binary_head
    from mtbench.options import check_int

    check_int("task.data_seed", cfg.get("data_seed"), minimum=0)
    for key in ("n_train", "n_val", "n_test"):
        check_int(f"task.{key}", cfg.get(key), minimum=1)
    check_int("task.image_size", cfg.get("image_size"), minimum=16)
    check_binary_head(cfg)
    return TaskSpec(
        len(ATTRIBUTES), tuple(c.key for c in binary_columns(cfg.get("columns"))), task_names=tuple(ATTRIBUTES)
    )


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def make_shapes40(
    seed: int = 0,
    n_train: int = 8000,
    n_val: int = 2000,
    n_test: int = 2000,
    image_size: int = 32,
) -> Shapes40:
    """Generate the shapes40 dataset in memory (see the module docstring).

    The same ``seed`` gives identical tensors bit for bit; labels depend only on ``seed``
    and the split sizes, not on ``image_size``.
    """
    seed = _check_int("seed", seed, 0)
    n_train = _check_int("n_train", n_train, 1)
    n_val = _check_int("n_val", n_val, 1)
    n_test = _check_int("n_test", n_test, 1)
    image_size = _check_int("image_size", image_size, 16)
    seqs = np.random.SeedSequence(seed).spawn(3)
    train, val, test = (_make_split(sq, n, image_size) for sq, n in zip(seqs, (n_train, n_val, n_test), strict=True))
    return Shapes40(attribute_names=list(ATTRIBUTES), train=train, val=val, test=test)
