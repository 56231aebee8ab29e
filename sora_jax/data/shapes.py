"""Procedural "moving shapes" text-video data set (no downloads, deterministic by seed).

Every example is one saturated shape (circle / square / triangle) moving in a straight line
at constant velocity over a desaturated, optionally low-contrast textured background, with a
caption from a small closed grammar:

    a {size} {colour} {shape} [moves {direction} {speed}] on a {background} [{texture}] background

The bracketed motion clause is absent for 1-frame examples (images); the texture word is absent
for the 'plain' texture. Because the foreground is the only saturated thing in a frame, the
attributes can be measured back from pixels (see `sora_jax.evaluation.prompt_following`).

Geometry convention: positions are in pixel units, pixel (i, j) has its centre at (i, j) and
covers [i - 0.5, i + 0.5] x [j - 0.5, j + 0.5]. Every shape has extent `radius` from its centre
in all directions (circle radius, square half-side, triangle circumradius), so a shape is fully
inside the frame when  radius - 0.5 <= centre <= size - 0.5 - radius  on both axes.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import MappingProxyType
from typing import Any

import numpy as np

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")

# Saturated foreground colours: hues are well separated and max-min channel >= 150, so a
# saturation threshold cleanly separates them from every background below.
COLOURS: MappingProxyType = MappingProxyType(
    {
        "red": (220, 40, 40),
        "orange": (240, 140, 20),
        "yellow": (230, 215, 30),
        "green": (40, 190, 60),
        "cyan": (30, 200, 210),
        "blue": (40, 70, 230),
        "magenta": (210, 40, 200),
    }
)

# Shape radius as a fraction of min(height, width).
SIZES: MappingProxyType = MappingProxyType({"small": 0.12, "medium": 0.17, "large": 0.23})

# Unit (dy, dx) vectors in image coordinates (up is -y).
_D = float(np.sqrt(0.5))
DIRECTIONS: MappingProxyType = MappingProxyType(
    {
        "left": (0.0, -1.0),
        "right": (0.0, 1.0),
        "up": (-1.0, 0.0),
        "down": (1.0, 0.0),
        "up-left": (-_D, -_D),
        "up-right": (-_D, _D),
        "down-left": (_D, -_D),
        "down-right": (_D, _D),
    }
)

# Displacement per frame as a fraction of min(height, width). The fastest speed is chosen so
# that a large shape still fits for a 17-frame clip: 16 * 0.0325 = 0.52 <= 1 - 2 * 0.23.
SPEEDS: MappingProxyType = MappingProxyType({"slowly": 0.01, "steadily": 0.02, "quickly": 0.0325})

# Desaturated backgrounds (max-min channel <= 30).
BACKGROUNDS: MappingProxyType = MappingProxyType(
    {
        "black": (20, 20, 20),
        "charcoal": (68, 68, 74),
        "grey": (128, 128, 128),
        "silver": (190, 190, 184),
        "white": (236, 236, 236),
    }
)

TEXTURES: tuple[str, ...] = ("plain", "checkered", "striped", "noisy")
# Texture amplitude (added equally to all channels, so the background stays desaturated).
TEXTURE_AMPLITUDE = 14.0

_FIXED_WORDS = ("a", "moves", "on", "background")
VOCABULARY: tuple[str, ...] = (
    _FIXED_WORDS
    + SHAPES
    + tuple(COLOURS)
    + tuple(SIZES)
    + tuple(DIRECTIONS)
    + tuple(SPEEDS)
    + tuple(BACKGROUNDS)
    + tuple(t for t in TEXTURES if t != "plain")
)
assert len(set(VOCABULARY)) == len(VOCABULARY), "caption vocabulary words must be unique"

# The values each attribute draws from, by attribute name ('plain' is the texture no word names).
_CHOICES: MappingProxyType = MappingProxyType(
    {
        "shape": SHAPES,
        "colour": tuple(COLOURS),
        "size": tuple(SIZES),
        "direction": tuple(DIRECTIONS),
        "speed": tuple(SPEEDS),
        "background": tuple(BACKGROUNDS),
        "texture": TEXTURES,
    }
)


def exclusion_problem(words: Sequence[str]) -> str:
    """Why `words` cannot be excluded from the set ('' when they can): each must be an
    attribute value (a colour, shape, size, direction, speed, background or texture) and
    every attribute must keep at least one value."""
    if isinstance(words, str) or any(not isinstance(w, str) for w in words):
        return "must be a sequence of words"
    values = {v for choices in _CHOICES.values() for v in choices}
    unknown = [w for w in words if w not in values]
    if unknown:
        return f"{unknown[0]!r} is not an attribute value; expected some of {sorted(values)}"
    for name, choices in _CHOICES.items():
        if set(choices) <= set(words):
            return f"leaves no {name}"
    return ""


def check_excluded(words: Sequence[str]) -> tuple[str, ...]:
    """`words` as a tuple; a ValueError when `exclusion_problem` finds one."""
    problem = exclusion_problem(words)
    if problem:
        raise ValueError(f"exclude_words={words!r}: {problem}")
    return tuple(words)


def _check_choice(name: str, value: Any, choices) -> None:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; expected one of {sorted(choices)}")


def attributes_for_prompt(
    shape: str,
    colour: str,
    size: str,
    direction: str | None = None,
    speed: str | None = None,
    background: str = "grey",
    texture: str = "plain",
) -> dict:
    """Validated attribute dict (no start position) for building a caption or a prompt.

    direction and speed must both be given (a video prompt) or both be None (an image prompt).
    """
    _check_choice("shape", shape, SHAPES)
    _check_choice("colour", colour, COLOURS)
    _check_choice("size", size, SIZES)
    _check_choice("background", background, BACKGROUNDS)
    _check_choice("texture", texture, TEXTURES)
    if (direction is None) != (speed is None):
        raise ValueError(
            "direction and speed must both be given or both be None, got "
            f"direction={direction!r}, speed={speed!r}"
        )
    if direction is not None:
        _check_choice("direction", direction, DIRECTIONS)
        _check_choice("speed", speed, SPEEDS)
    return dict(
        shape=shape,
        colour=colour,
        size=size,
        direction=direction,
        speed=speed,
        background=background,
        texture=texture,
    )


def velocity(attrs: dict, height: int, width: int) -> tuple[float, float]:
    """(dy, dx) displacement in pixels per frame; (0, 0) for images."""
    if attrs.get("direction") is None:
        return 0.0, 0.0
    dy, dx = DIRECTIONS[attrs["direction"]]
    step = SPEEDS[attrs["speed"]] * min(height, width)
    return dy * step, dx * step


def radius(attrs: dict, height: int, width: int) -> float:
    return SIZES[attrs["size"]] * min(height, width)


def _start_range(extent: int, r: float, travel: float) -> tuple[float, float]:
    """Interval of start centres keeping [centre, centre + travel] inside the frame on one axis.

    If the clip is too long to fit at this speed the interval is empty; then the trajectory is
    centred on the frame and the shape is partially clipped at both ends.
    """
    lo = r - 0.5 - min(0.0, travel)
    hi = extent - 0.5 - r - max(0.0, travel)
    if lo > hi:
        mid = (extent - 1) / 2 - travel / 2
        return mid, mid
    return lo, hi


def sample_attributes(
    rng: np.random.Generator,
    is_image: bool,
    num_frames: int = 17,
    height: int = 32,
    width: int = 32,
    exclude: Sequence[str] = (),
) -> dict:
    """Random attributes plus a `start` centre (y, x) in pixels for a (num_frames, height, width)
    clip, chosen uniformly among the starts that keep the shape inside the frame throughout.

    For images direction/speed are None and num_frames is treated as 1. Each attribute is drawn
    among its values not in `exclude` (checked by `check_excluded`); with none excluded the
    draws are those of the full set.
    """
    if height <= 0 or width <= 0 or num_frames <= 0:
        raise ValueError(
            f"num_frames, height and width must be positive, got {(num_frames, height, width)}"
        )
    excluded = set(check_excluded(exclude))

    def pick(name: str) -> str:
        options = [v for v in _CHOICES[name] if v not in excluded]
        return options[int(rng.integers(len(options)))]

    attrs = attributes_for_prompt(
        shape=pick("shape"),
        colour=pick("colour"),
        size=pick("size"),
        direction=None if is_image else pick("direction"),
        speed=None if is_image else pick("speed"),
        background=pick("background"),
        texture=pick("texture"),
    )
    frames = 1 if is_image else num_frames
    r = radius(attrs, height, width)
    vy, vx = velocity(attrs, height, width)
    y_lo, y_hi = _start_range(height, r, vy * (frames - 1))
    x_lo, x_hi = _start_range(width, r, vx * (frames - 1))
    attrs["start"] = (float(rng.uniform(y_lo, y_hi)), float(rng.uniform(x_lo, x_hi)))
    return attrs


def caption(attrs: dict) -> str:
    """Caption of the closed grammar, e.g.
    'a small red circle moves left slowly on a grey checkered background'."""
    a = attributes_for_prompt(
        **{k: attrs.get(k) for k in ("shape", "colour", "size", "direction", "speed")},
        background=attrs.get("background", "grey"),
        texture=attrs.get("texture", "plain"),
    )
    words = ["a", a["size"], a["colour"], a["shape"]]
    if a["direction"] is not None:
        words += ["moves", a["direction"], a["speed"]]
    words += ["on", "a", a["background"]]
    if a["texture"] != "plain":
        words.append(a["texture"])
    words.append("background")
    return " ".join(words)


def parse_caption(text: str) -> dict:
    """Inverse of `caption`: attribute dict (texture 'plain' when absent).

    Raises ValueError for text outside the grammar."""
    words = text.split()

    def fail(why: str):
        raise ValueError(f"caption {text!r} is outside the grammar: {why}")

    if len(words) < 7 or words[0] != "a":
        fail("expected 'a {size} {colour} {shape} ...'")
    size, colour, shape = words[1:4]
    rest = words[4:]
    direction = speed = None
    if rest[0] == "moves":
        if len(rest) < 3:
            fail("truncated motion clause")
        direction, speed = rest[1], rest[2]
        rest = rest[3:]
    if len(rest) not in (4, 5) or rest[:2] != ["on", "a"] or rest[-1] != "background":
        fail("expected '... on a {background} [{texture}] background'")
    background = rest[2]
    texture = rest[3] if len(rest) == 5 else "plain"
    if len(rest) == 5 and texture == "plain":
        fail("'plain' is implied, not written")
    try:
        return attributes_for_prompt(shape, colour, size, direction, speed, background, texture)
    except ValueError as e:
        fail(str(e))


def shape_masks(
    shape: str, cy: np.ndarray, cx: np.ndarray, r: float, height: int, width: int
) -> np.ndarray:
    """bool[t h w] masks of `shape` with centres (cy[t], cx[t]) and extent r (circumradius)."""
    cy = np.asarray(cy, np.float32)[:, None, None]
    cx = np.asarray(cx, np.float32)[:, None, None]
    yy = np.arange(height, dtype=np.float32)[None, :, None] - cy
    xx = np.arange(width, dtype=np.float32)[None, None, :] - cx
    if shape == "circle":
        return yy * yy + xx * xx <= r * r
    if shape == "square":
        return (np.abs(yy) <= r) & (np.abs(xx) <= r)
    if shape == "triangle":
        # Equilateral, apex up, circumcentre at the centre: y in [-r, r/2], and the half-width
        # grows linearly from 0 at the apex to r*sqrt(3)/2 at the base.
        return (yy >= -r) & (yy <= r / 2) & (np.abs(xx) <= (yy + r) / np.sqrt(3.0))
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def _background(attrs: dict, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """f32[h w 3] background with its texture."""
    base = np.asarray(BACKGROUNDS[attrs.get("background", "grey")], np.float32)
    texture = attrs.get("texture", "plain")
    cell = max(2, min(height, width) // 8)
    yy, xx = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    if texture == "plain":
        pattern = np.zeros((height, width), np.float32)
    elif texture == "checkered":
        pattern = ((yy // cell + xx // cell) % 2) * 2.0 - 1.0
    elif texture == "striped":
        pattern = (((yy + xx) // cell) % 2) * 2.0 - 1.0
    elif texture == "noisy":
        pattern = rng.uniform(-1.0, 1.0, (height, width))
    else:
        raise ValueError(f"unknown texture {texture!r}; expected one of {TEXTURES}")
    return base + TEXTURE_AMPLITUDE * pattern.astype(np.float32)[..., None]


def render(
    attrs: dict, num_frames: int, height: int, width: int, rng: np.random.Generator | None = None
) -> np.ndarray:
    """Render attributes to uint8[t h w 3].

    The centre at frame k is start + velocity * k. Without attrs['start'] the trajectory is
    centred in the frame. `rng` only drives the 'noisy' texture (static over time);
    defaults to a fixed generator so rendering is deterministic.
    """
    if num_frames <= 0 or height <= 0 or width <= 0:
        raise ValueError(
            f"num_frames, height and width must be positive, got {(num_frames, height, width)}"
        )
    _check_choice("colour", attrs.get("colour"), COLOURS)
    rng = np.random.default_rng(0) if rng is None else rng
    r = radius(attrs, height, width)
    vy, vx = velocity(attrs, height, width)
    if attrs.get("start") is not None:
        y0, x0 = attrs["start"]
    else:
        y0 = (height - 1) / 2 - vy * (num_frames - 1) / 2
        x0 = (width - 1) / 2 - vx * (num_frames - 1) / 2
    k = np.arange(num_frames, dtype=np.float32)
    mask = shape_masks(attrs["shape"], y0 + vy * k, x0 + vx * k, r, height, width)
    bg = np.clip(np.rint(_background(attrs, height, width, rng)), 0, 255).astype(np.uint8)
    fg = np.asarray(COLOURS[attrs["colour"]], np.uint8)
    return np.where(mask[..., None], fg, bg[None])


class MovingShapes:
    """Random-access moving-shapes source (grain `RandomAccessDataSource` protocol).

    Example i is a pure function of (seed, i). With probability `image_fraction` it is a 1-frame
    image; otherwise its frame count is drawn from the entries of `frame_choices` that are > 1.
    Its (height, width) is drawn from `resolutions`. No example has an attribute value in
    `exclude_words` (e.g. ('magenta',): no magenta shape, so no caption with that word): a base
    model trained on such a set has never seen the words, which a fine-tune can then teach.

    `ds[i]` -> dict(video=uint8[t h w 3], caption=str, attributes=dict) where attributes also
    hold num_frames, height and width.
    """

    def __init__(
        self,
        seed: int,
        num_examples: int,
        frame_choices: Sequence[int] = (1, 5, 9, 17),
        resolutions: Sequence[tuple[int, int]] = ((32, 32), (32, 48), (48, 32)),
        image_fraction: float = 0.2,
        exclude_words: Sequence[str] = (),
    ):
        if not isinstance(num_examples, (int, np.integer)) or num_examples <= 0:
            raise ValueError(f"num_examples must be a positive int, got {num_examples!r}")
        frame_choices = tuple(frame_choices)
        if not frame_choices:
            raise ValueError("frame_choices must not be empty")
        if any(not isinstance(f, (int, np.integer)) or f <= 0 for f in frame_choices):
            raise ValueError(f"frame_choices must be positive ints, got {frame_choices}")
        resolutions = tuple(tuple(r) for r in resolutions)
        if not resolutions:
            raise ValueError("resolutions must not be empty")
        if any(len(r) != 2 or min(r) <= 0 for r in resolutions):
            raise ValueError(
                f"resolutions must be positive (height, width) pairs, got {resolutions}"
            )
        if not 0.0 <= image_fraction <= 1.0:
            raise ValueError(f"image_fraction must be in [0, 1], got {image_fraction}")
        self.video_lengths = tuple(int(f) for f in frame_choices if f > 1)
        if not self.video_lengths and image_fraction < 1.0:
            raise ValueError(
                f"frame_choices {frame_choices} has no length > 1, so image_fraction must be 1"
            )
        self.seed = int(seed)
        self.num_examples = int(num_examples)
        self.frame_choices = frame_choices
        self.resolutions = tuple((int(h), int(w)) for h, w in resolutions)
        self.image_fraction = float(image_fraction)
        self.exclude_words = check_excluded(exclude_words)

    def __len__(self) -> int:
        return self.num_examples

    def __getitem__(self, index: int) -> dict:
        if not isinstance(index, (int, np.integer)):
            raise ValueError(f"index must be an int, got {type(index).__name__}")
        if not 0 <= index < self.num_examples:
            raise ValueError(f"index {index} out of range for {self.num_examples} examples")
        rng = np.random.default_rng([self.seed, int(index)])
        is_image = bool(rng.random() < self.image_fraction)
        lengths = self.video_lengths
        num_frames = 1 if is_image else lengths[int(rng.integers(len(lengths)))]
        height, width = self.resolutions[int(rng.integers(len(self.resolutions)))]
        attrs = sample_attributes(rng, is_image, num_frames, height, width, self.exclude_words)
        video = render(attrs, num_frames, height, width, rng)
        attrs.update(num_frames=num_frames, height=height, width=width)
        return dict(video=video, caption=caption(attrs), attributes=attrs)

    def __repr__(self) -> str:
        return (
            f"MovingShapes(seed={self.seed}, num_examples={self.num_examples}, "
            f"frame_choices={self.frame_choices}, resolutions={self.resolutions}, "
            f"image_fraction={self.image_fraction}, exclude_words={self.exclude_words})"
        )
