"""Tests for video file reading and writing."""

import numpy as np
import pytest

from sora_jax.data.shapes import MovingShapes
from sora_jax.data.video_io import read_metadata, read_video, write_video


def _videos():
    ds = MovingShapes(seed=2, num_examples=8, frame_choices=(9,), image_fraction=0.0)
    return [ds[i] for i in range(4)]


def test_mp4_round_trip_with_metadata(tmp_path):
    for i, ex in enumerate(_videos()):
        video = ex["video"]
        path = tmp_path / f"v{i}.mp4"
        write_video(path, video, fps=8, metadata={"comment": ex["caption"], "title": "shapes"})
        back = read_video(path)
        assert back.shape == video.shape and back.dtype == np.uint8
        assert np.abs(back.astype(np.float32) - video).mean() < 12
        meta = read_metadata(path)
        assert meta["comment"] == ex["caption"] and meta["title"] == "shapes"


def test_gif_round_trip(tmp_path):
    for i, ex in enumerate(_videos()):
        video = ex["video"]
        path = tmp_path / f"v{i}.gif"
        write_video(str(path), video, fps=4)
        back = read_video(str(path))
        assert back.shape == video.shape and back.dtype == np.uint8
        # rgb8 is a fixed 3-3-2 bit palette, so colours are coarse but close.
        assert np.abs(back.astype(np.float32) - video).mean() < 30


def test_single_frame_and_distinct_frames(tmp_path):
    video = np.zeros((3, 16, 16, 3), np.uint8)
    video[1] = 255
    video[2, :, :, 0] = 200
    path = tmp_path / "x.mp4"
    write_video(path, video)
    back = read_video(path).astype(np.float32)
    assert back.shape == (3, 16, 16, 3)
    np.testing.assert_allclose(back.mean((1, 2)), video.mean((1, 2)), atol=8)
    write_video(tmp_path / "one.mp4", video[1:2])
    assert read_video(tmp_path / "one.mp4").shape == (1, 16, 16, 3)


def test_missing_file(tmp_path):
    path = tmp_path / "nope.mp4"
    with pytest.raises(FileNotFoundError, match="nope.mp4"):
        read_video(path)


@pytest.mark.parametrize("suffix", [".mp4", ".gif"])
def test_corrupt_file(tmp_path, suffix):
    path = tmp_path / f"junk{suffix}"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(ValueError, match=f"junk{suffix}"):
        read_video(path)


def test_bad_writes_rejected(tmp_path):
    video = np.zeros((2, 16, 16, 3), np.uint8)
    with pytest.raises(ValueError, match="even"):
        write_video(tmp_path / "odd.mp4", np.zeros((2, 15, 16, 3), np.uint8))
    with pytest.raises(ValueError, match="suffix"):
        write_video(tmp_path / "x.avi", video)
    with pytest.raises(ValueError, match="uint8"):
        write_video(tmp_path / "x.mp4", video.astype(np.float32))
    with pytest.raises(ValueError, match="shape"):
        write_video(tmp_path / "x.mp4", video[..., :2])
    with pytest.raises(ValueError, match="fps"):
        write_video(tmp_path / "x.mp4", video, fps=0)
    # Odd sizes are fine for gif.
    write_video(tmp_path / "odd.gif", np.zeros((2, 15, 17, 3), np.uint8))
    assert read_video(tmp_path / "odd.gif").shape == (2, 15, 17, 3)
