"""Tests for the procedural moving-shapes data set."""

import colorsys
import itertools
import time

import numpy as np
import pytest

from sora_jax.data import shapes
from sora_jax.data.shapes import (
    BACKGROUNDS,
    COLOURS,
    DIRECTIONS,
    SHAPES,
    SIZES,
    SPEEDS,
    TEXTURES,
    VOCABULARY,
    MovingShapes,
    attributes_for_prompt,
    caption,
    parse_caption,
    render,
    sample_attributes,
)


def _saturation(video):
    v = video.astype(np.int16)
    return v.max(-1) - v.min(-1)


def test_vocab_constants():
    assert SHAPES == ("circle", "square", "triangle")
    assert TEXTURES == ("plain", "checkered", "striped", "noisy")
    assert len(COLOURS) == 7 and len(DIRECTIONS) == 8 and len(SIZES) == 3 and len(SPEEDS) == 3
    for rgb in COLOURS.values():
        assert max(rgb) - min(rgb) >= 150
    for rgb in BACKGROUNDS.values():
        assert max(rgb) - min(rgb) <= 30
    hues = [colorsys.rgb_to_hsv(*(c / 255 for c in rgb))[0] * 360 for rgb in COLOURS.values()]
    for a, b in itertools.combinations(hues, 2):
        assert min(abs(a - b), 360 - abs(a - b)) >= 20
    for dy, dx in DIRECTIONS.values():
        assert np.hypot(dy, dx) == pytest.approx(1.0)
    assert DIRECTIONS["up"] == (-1.0, 0.0) and DIRECTIONS["right"] == (0.0, 1.0)
    assert len(set(VOCABULARY)) == len(VOCABULARY)


def test_determinism():
    ds = MovingShapes(seed=3, num_examples=50)
    again = MovingShapes(seed=3, num_examples=50)
    for i in (0, 7, 49):
        a, b = ds[i], again[i]
        np.testing.assert_array_equal(a["video"], b["video"])
        assert a["caption"] == b["caption"] and a["attributes"] == b["attributes"]
    other = MovingShapes(seed=4, num_examples=50)
    assert sum(ds[i]["caption"] != other[i]["caption"] for i in range(20)) >= 15
    # Distinct indices give distinct videos.
    assert len({ds[i]["video"].tobytes() for i in range(50)}) == 50


def test_variable_shapes_and_images():
    ds = MovingShapes(seed=0, num_examples=400)
    seen_res, seen_frames, images = set(), set(), 0
    for i in range(len(ds)):
        ex = ds[i]
        v, a = ex["video"], ex["attributes"]
        assert v.dtype == np.uint8 and v.ndim == 4 and v.shape[-1] == 3
        assert v.shape == (a["num_frames"], a["height"], a["width"], 3)
        seen_res.add(v.shape[1:3])
        seen_frames.add(v.shape[0])
        if v.shape[0] == 1:
            images += 1
            assert a["direction"] is None and a["speed"] is None
            assert "moves" not in ex["caption"]
        else:
            assert a["direction"] in DIRECTIONS and a["speed"] in SPEEDS
    assert seen_res == {(32, 32), (32, 48), (48, 32)}
    assert seen_frames == {1, 5, 9, 17}
    assert 0.12 < images / len(ds) < 0.28  # image_fraction=0.2
    only_videos = MovingShapes(seed=0, num_examples=50, frame_choices=(9,), image_fraction=0.0)
    assert {only_videos[i]["video"].shape[0] for i in range(50)} == {9}


def test_caption_matches_attributes_and_round_trips():
    ds = MovingShapes(seed=1, num_examples=200)
    textures = set()
    for i in range(len(ds)):
        ex = ds[i]
        a, text = ex["attributes"], ex["caption"]
        assert text == caption(a) and text == text.lower() and "  " not in text
        assert set(text.split()) <= set(VOCABULARY)
        words = text.split()
        assert words[1:4] == [a["size"], a["colour"], a["shape"]]
        assert a["background"] in words
        assert (a["texture"] in words) == (a["texture"] != "plain")
        parsed = parse_caption(text)
        assert parsed == {k: a[k] for k in parsed}
        assert set(parsed) == {
            "shape",
            "colour",
            "size",
            "direction",
            "speed",
            "background",
            "texture",
        }
        textures.add(a["texture"])
    assert textures == set(TEXTURES)
    assert (
        caption(
            attributes_for_prompt("circle", "red", "small", "left", "slowly", "grey", "checkered")
        )
        == "a small red circle moves left slowly on a grey checkered background"
    )
    assert (
        caption(attributes_for_prompt("triangle", "blue", "large"))
        == "a large blue triangle on a grey background"
    )


@pytest.mark.parametrize(
    "text",
    [
        "",
        "hello world",
        "a big red circle on a grey background",
        "a small red circle moves left on a grey background",
        "a small red circle moves sideways slowly on a grey background",
        "a small red circle on a grey plain background",
        "a small red circle on a grey background please",
        "a small red hexagon on a grey background",
        "a small red circle on a purple background",
    ],
)
def test_parse_caption_rejects_text_outside_grammar(text):
    with pytest.raises(ValueError, match="outside the grammar"):
        parse_caption(text)


def test_shape_stays_inside_frame():
    ds = MovingShapes(seed=5, num_examples=300)
    pad = 40
    for i in range(len(ds)):
        ex = ds[i]
        a, v = ex["attributes"], ex["video"]
        t, h, w = a["num_frames"], a["height"], a["width"]
        fg = _saturation(v) > 75
        counts = fg.sum((1, 2))
        assert (counts > 0).all(), f"example {i} loses its foreground"
        # The same shape on a padded canvas has exactly as many pixels: nothing was clipped.
        vy, vx = shapes.velocity(a, h, w)
        k = np.arange(t)
        full = shapes.shape_masks(
            a["shape"],
            a["start"][0] + pad + vy * k,
            a["start"][1] + pad + vx * k,
            shapes.radius(a, h, w),
            h + 2 * pad,
            w + 2 * pad,
        )
        np.testing.assert_array_equal(counts, full.sum((1, 2)))


def test_render_motion_colour_and_background():
    a = attributes_for_prompt("square", "green", "medium", "right", "quickly", "grey", "plain")
    a["start"] = (20.0, 10.0)
    v = render(a, 9, 40, 48)
    assert v.shape == (9, 40, 48, 3) and v.dtype == np.uint8
    fg = _saturation(v) > 75
    np.testing.assert_array_equal(v[fg][0], COLOURS["green"])
    assert (v[~fg] == 128).all()
    xs = np.arange(48)
    cx = (fg.sum(1) * xs).sum(-1) / fg.sum((1, 2))
    cy = (fg.sum(2) * np.arange(40)).sum(-1) / fg.sum((1, 2))
    step = SPEEDS["quickly"] * 40
    np.testing.assert_allclose(cx, 10.0 + step * np.arange(9), atol=0.5)
    np.testing.assert_allclose(cy, 20.0, atol=0.01)


@pytest.mark.parametrize("texture", TEXTURES)
def test_textures_are_low_contrast_and_desaturated(texture):
    for background in BACKGROUNDS:
        a = attributes_for_prompt("circle", "red", "small", background=background, texture=texture)
        v = render(a, 1, 32, 32, np.random.default_rng(0))
        fg = _saturation(v) > 75
        bg = v[~fg].astype(np.int16)
        assert (_saturation(v)[~fg] <= 30).all()
        assert np.abs(bg - np.asarray(BACKGROUNDS[background])).max() <= 15
        spread = bg.std(axis=0).max()  # per channel: spatial variation only
        assert (spread == 0) if texture == "plain" else (spread > 3)


def test_render_is_fast():
    a = attributes_for_prompt(
        "triangle", "cyan", "large", "down-left", "steadily", "white", "noisy"
    )
    render(a, 17, 48, 48)
    n = 50
    start = time.perf_counter()
    for _ in range(n):
        render(a, 17, 48, 48)
    assert (time.perf_counter() - start) / n < 0.02  # ~0.5 ms unloaded; loose for shared CPUs


def test_sample_attributes_start_respects_motion():
    rng = np.random.default_rng(0)
    for _ in range(200):
        a = sample_attributes(rng, is_image=False, num_frames=17, height=32, width=48)
        r = shapes.radius(a, 32, 48)
        vy, vx = shapes.velocity(a, 32, 48)
        for y, x in (
            (a["start"][0], a["start"][1]),
            (a["start"][0] + 16 * vy, a["start"][1] + 16 * vx),
        ):
            assert r - 0.5 - 1e-6 <= y <= 31.5 - r + 1e-6
            assert r - 0.5 - 1e-6 <= x <= 47.5 - r + 1e-6
    img = sample_attributes(rng, is_image=True)
    assert img["direction"] is None and img["speed"] is None


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_examples=0), "num_examples"),
        (dict(num_examples=10, frame_choices=()), "frame_choices"),
        (dict(num_examples=10, frame_choices=(0, 5)), "frame_choices"),
        (dict(num_examples=10, frame_choices=(1,), image_fraction=0.5), "image_fraction"),
        (dict(num_examples=10, resolutions=()), "resolutions"),
        (dict(num_examples=10, resolutions=((0, 32),)), "resolutions"),
        (dict(num_examples=10, image_fraction=1.5), "image_fraction"),
        (dict(num_examples=10, image_fraction=-0.1), "image_fraction"),
    ],
)
def test_bad_args_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MovingShapes(seed=0, **kwargs)


def test_bad_index_and_attributes_rejected():
    ds = MovingShapes(seed=0, num_examples=10)
    with pytest.raises(ValueError, match="out of range"):
        ds[10]
    with pytest.raises(ValueError, match="out of range"):
        ds[-1]
    with pytest.raises(ValueError, match="colour"):
        attributes_for_prompt("circle", "purple", "small")
    with pytest.raises(ValueError, match="direction and speed"):
        attributes_for_prompt("circle", "red", "small", direction="left")
    with pytest.raises(ValueError, match="positive"):
        render(attributes_for_prompt("circle", "red", "small"), 0, 32, 32)


def test_excluded_words_are_never_drawn():
    ds = MovingShapes(seed=0, num_examples=200, exclude_words=("white", "circle", "left"))
    attrs = [ds[i]["attributes"] for i in range(200)]
    assert {a["background"] for a in attrs} == set(BACKGROUNDS) - {"white"}
    assert {a["shape"] for a in attrs} == {"square", "triangle"}
    assert "left" not in {a["direction"] for a in attrs}
    # Nothing excluded draws exactly the full set.
    full, same = (
        MovingShapes(seed=0, num_examples=5),
        MovingShapes(seed=0, num_examples=5, exclude_words=()),
    )
    assert [full[i]["caption"] for i in range(5)] == [same[i]["caption"] for i in range(5)]
    with pytest.raises(ValueError, match="'purple' is not an attribute value"):
        MovingShapes(seed=0, num_examples=5, exclude_words=("purple",))
    with pytest.raises(ValueError, match="leaves no shape"):
        MovingShapes(seed=0, num_examples=5, exclude_words=SHAPES)
