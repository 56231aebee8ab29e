"""Accuracy of the built-in moving-shapes captioner against the true attributes.

  python benchmarks/captioner_accuracy.py --num_videos=1000 --seed=4242 [--mp4]

Held-out videos (seed never used in training; 1/5/9/17 frames, four resolutions, 20 % images),
optionally through an mp4 round trip (PyAV, as the recaption pipeline reads them). Prints one
JSON line of per-attribute accuracies, `attribute_accuracy` over all of them and
`caption_accuracy` (the whole caption right).
"""

import json
import os
import tempfile

from absl import app, flags

from sora_jax.captioning import shapes_captioner
from sora_jax.data import shapes, video_io

_NUM = flags.DEFINE_integer("num_videos", 1000, "Held-out videos.")
_SEED = flags.DEFINE_integer("seed", 4242, "Data seed (not the training seed 0).")
_MP4 = flags.DEFINE_bool("mp4", False, "Round-trip every video through an mp4 file first.")

RESOLUTIONS = ((32, 32), (32, 48), (48, 32), (64, 96))


def held_out(num_videos: int, seed: int, mp4: bool):
    ds = shapes.MovingShapes(seed, num_videos, (1, 5, 9, 17), RESOLUTIONS)
    videos, attributes = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(num_videos):
            example = ds[i]
            video = example["video"]
            if mp4:
                path = os.path.join(tmp, "v.mp4")
                video_io.write_video(path, video)
                video = video_io.read_video(path)
            videos.append(video)
            attributes.append(example["attributes"])
    return videos, attributes


def main(_):
    videos, attributes = held_out(_NUM.value, _SEED.value, _MP4.value)
    result = shapes_captioner.accuracy(videos, attributes)
    print(json.dumps(dict(result, mp4=_MP4.value, seed=_SEED.value)))


if __name__ == "__main__":
    app.run(main)
