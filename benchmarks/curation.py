"""Curation throughput per CPU core: scene detection + measurements on generated 480p videos.

  python benchmarks/curation.py [--videos=2] [--shots=3] [--shot_seconds=4] [--fps=24]
      [--height=480] [--width=854] [--detail_size=480] [--analysis_size=96]
      [--interpolation=AREA|FAST_BILINEAR|...]

Writes `--videos` h264 mp4 files (moving-shapes shots of distinct looks, cut hard, at
`--fps`) to a temp dir, then times in this process, per video: the streaming decode alone
(PyAV + the two swscale downscales) and the whole per-video step of the curation job
(`clipper.clips`: decode, per-frame histograms / motion / Laplacian / pHash, cuts, clip
measurements). Rates are per CPU second of this process (`time.process_time`, decoder threads
included: per core, and not skewed by other jobs on a shared machine). Prints clips/s and
frames/s per core, the share of the time spent decoding, and whether the cuts found are the
true ones (within one frame). `--beam` also runs the whole job (DirectRunner, default
thresholds, dedup on) over the same files and prints its wall time and counters.
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from sora_jax.curation import beam_pipeline, clipper, decode
from sora_jax.data import shapes, video_io


def look(j: int) -> tuple:
    """Attributes of the j-th shot: consecutive shots differ in every attribute (and so in
    layout too: no two shots of the run are near-duplicates)."""
    pick = lambda names: list(names)[j % len(names)]  # noqa: E731
    return (
        pick(shapes.SHAPES),
        pick(shapes.COLOURS),
        "large",
        pick(shapes.DIRECTIONS),
        "quickly",
        pick(shapes.BACKGROUNDS),
        pick(shapes.TEXTURES),
    )


def make_video(path, index, shots, frames_per_shot, height, width, fps):
    """Writes `shots` hard-cut shots to `path`; returns the true cut frames."""
    parts = []
    for s in range(shots):
        a = shapes.attributes_for_prompt(*look(index * shots + s))
        parts.append(shapes.render(a, frames_per_shot, height, width))
    video_io.write_video(path, np.concatenate(parts), fps=fps)
    return [frames_per_shot * s for s in range(1, shots)]


def timed(fn):
    c0, w0 = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.process_time() - c0, time.perf_counter() - w0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--videos", type=int, default=2)
    ap.add_argument("--shots", type=int, default=3)
    ap.add_argument("--shot_seconds", type=float, default=4.0)
    ap.add_argument("--fps", type=int, default=24)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=854)
    ap.add_argument("--detail_size", type=int, default=480)
    ap.add_argument("--analysis_size", type=int, default=96)
    ap.add_argument("--interpolation", default="AREA")
    ap.add_argument("--beam", action="store_true", help="also time the whole Beam job")
    args = ap.parse_args()
    spec = clipper.ClipperSpec(
        analysis_size=args.analysis_size,
        detail_size=args.detail_size,
        interpolation=args.interpolation,
        min_duration=1.0,
        max_duration=max(10.0, args.shot_seconds),
    )
    per_shot = int(round(args.shot_seconds * args.fps))
    totals = dict(clips=0, frames=0, cpu=0.0, wall=0.0, decode_cpu=0.0, cuts_exact=True)
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.videos):
            path = str(Path(tmp) / f"v{i}.mp4")
            truth = make_video(path, i, args.shots, per_shot, args.height, args.width, args.fps)

            def decode_only():
                _, frames = decode.frames(
                    path, spec.analysis_size, spec.detail_size, spec.interpolation
                )
                return sum(1 for _ in frames)

            _, dcpu, _ = timed(decode_only)
            (clips, short, _, _, n), cpu, wall = timed(
                lambda: clipper.clips({"path": path}, "v", spec)
            )
            found = [c["start_frame"] for c in clips[1:]]
            totals["cuts_exact"] &= len(found) == len(truth) and all(
                abs(a - b) <= 1 for a, b in zip(found, truth)
            )
            totals["clips"] += len(clips) + len(short)
            totals["frames"] += n
            totals["cpu"] += cpu
            totals["wall"] += wall
            totals["decode_cpu"] += dcpu
        if args.beam:
            job = beam_pipeline.CurateConfig(tmp, str(Path(tmp) / "out"), clipper=spec)
            counts, _, beam_wall = timed(lambda: beam_pipeline.run(job))
            totals["beam"] = dict(
                wall_s=round(beam_wall, 2),
                **{k: counts[k] for k in ("videos", "clips", "kept", "rejected", "failed")},
            )
    result = dict(
        resolution=f"{args.width}x{args.height}",
        fps=args.fps,
        videos=args.videos,
        clips=totals["clips"],
        frames=totals["frames"],
        clips_per_s_per_core=round(totals["clips"] / totals["cpu"], 3),
        frames_per_s_per_core=round(totals["frames"] / totals["cpu"], 1),
        realtime_factor_per_core=round(totals["frames"] / args.fps / totals["cpu"], 2),
        decode_share=round(totals["decode_cpu"] / totals["cpu"], 2),
        cpu_s=round(totals["cpu"], 2),
        wall_s=round(totals["wall"], 2),
        cuts_within_1_frame=bool(totals["cuts_exact"]),
    )
    if "beam" in totals:
        result["beam_job"] = totals["beam"]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
