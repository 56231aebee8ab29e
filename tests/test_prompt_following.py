"""Tests for pixel-based prompt-following measurement."""

import numpy as np
import pytest

from sora_jax.data.shapes import MovingShapes, attributes_for_prompt, render
from sora_jax.data.video_io import read_video, write_video
from sora_jax.evaluation.prompt_following import analyze_video, foreground_mask, score


def _real(n=64, seed=11):
    ds = MovingShapes(seed=seed, num_examples=n, frame_choices=(9, 13, 17), image_fraction=0.0)
    examples = [ds[i] for i in range(n)]
    return [e["video"] for e in examples], [e["attributes"] for e in examples]


def test_real_data_scores_high():
    videos, attrs = _real()
    assert {a["texture"] for a in attrs} == {"plain", "checkered", "striped", "noisy"}
    assert {v.shape[0] for v in videos} == {9, 13, 17}
    result = score(videos, attrs)
    assert result["num_videos"] == 64 and result["num_motion_videos"] == 64
    # Measured: all four are 1.0 on rendered data.
    assert result["colour_accuracy"] >= 0.95
    assert result["direction_accuracy"] >= 0.9
    assert result["speed_accuracy"] >= 0.9
    assert result["shape_accuracy"] >= 0.9


def test_real_data_after_mp4_round_trip(tmp_path):
    videos, attrs = _real(n=16, seed=12)
    decoded = []
    for i, v in enumerate(videos):
        write_video(tmp_path / f"{i}.mp4", v)
        decoded.append(read_video(tmp_path / f"{i}.mp4"))
    result = score(decoded, attrs)
    assert result["colour_accuracy"] >= 0.95
    assert result["direction_accuracy"] >= 0.85


def test_noise_scores_near_chance():
    videos, attrs = _real(n=48, seed=13)
    rng = np.random.default_rng(0)
    noise = [rng.integers(0, 256, v.shape, dtype=np.uint8) for v in videos]
    result = score(noise, attrs)
    assert result["colour_accuracy"] < 0.35
    assert result["direction_accuracy"] < 0.35


@pytest.mark.parametrize("direction", ["left", "right", "up", "down-left"])
def test_direction_of_a_single_video(direction):
    a = attributes_for_prompt("circle", "red", "medium", direction, "steadily", "grey", "checkered")
    found = analyze_video(render(a, 17, 32, 48))
    assert found["direction"] == direction
    assert found["speed"] == "steadily"
    assert found["colour"] == "red" and found["shape"] == "circle"
    dy, dx = found["velocity"]
    expected = 0.02 * 32
    assert np.hypot(dy, dx) == pytest.approx(expected, rel=0.1)
    assert 0.01 < found["foreground_fraction"] < 0.2


@pytest.mark.parametrize("shape", ["circle", "square", "triangle"])
@pytest.mark.parametrize("colour", ["orange", "yellow", "cyan", "magenta"])
def test_shape_and_colour_of_images(shape, colour):
    a = attributes_for_prompt(shape, colour, "large", background="white", texture="striped")
    found = analyze_video(render(a, 1, 48, 48))
    assert found["shape"] == shape and found["colour"] == colour
    assert found["direction"] is None and found["speed"] is None and found["velocity"] is None


def test_static_and_empty_videos():
    a = attributes_for_prompt("square", "blue", "small", background="black")
    static = np.repeat(render(a, 1, 32, 32), 9, axis=0)
    found = analyze_video(static)
    assert found["colour"] == "blue" and found["direction"] is None
    assert found["relative_speed"] == pytest.approx(0.0, abs=1e-6)
    empty = np.full((5, 32, 32, 3), 128, np.uint8)
    found = analyze_video(empty)
    assert found["colour"] is None and found["shape"] is None and found["direction"] is None
    assert found["foreground_fraction"] == 0.0
    assert not foreground_mask(empty).any()


def test_bad_input_rejected():
    with pytest.raises(ValueError, match="uint8"):
        analyze_video(np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="shape"):
        analyze_video(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="attribute"):
        score([np.zeros((2, 8, 8, 3), np.uint8)], [])


def test_only_the_named_attributes_are_scored():
    """A user's prompt names some attributes: the others are not counted."""
    videos, attrs = _real(n=4, seed=13)
    wrong = {"square": "circle", "circle": "triangle", "triangle": "square"}
    named = [
        dict(colour=a["colour"], shape=wrong[a["shape"]]) if i % 2 else dict(colour=a["colour"])
        for i, a in enumerate(attrs)
    ]
    named[0]["direction"] = attrs[0]["direction"]
    result = score(videos, named)
    assert result["colour_accuracy"] == 1.0 and result["shape_accuracy"] == 0.0
    assert result["direction_accuracy"] == 1.0 and result["num_motion_videos"] == 1
    assert np.isnan(result["speed_accuracy"])
