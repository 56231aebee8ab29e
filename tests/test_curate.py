"""Curation: scene cuts, measurements, filters, near-duplicates, the Beam job (DirectRunner) with
its dead letters, resume and report, the CLI, and the chain curate -> recaption -> build_dataset.
Videos are moving-shapes renders written as 64x48 mp4 files at 10 fps."""

import importlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from absl import app

from sora_jax.captioning import manifest
from sora_jax.curation import clipper, dedup, filters, measurements, report, scenes, scorers
from sora_jax.data import shapes, video_io

beam = pytest.importorskip("apache_beam")
from sora_jax.curation import beam_pipeline  # noqa: E402 (needs apache_beam)

H, W, FPS = 48, 64, 10
CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "curate.py")
# (shape, colour, size, direction, background, texture), all moving quickly: distinct shots.
SHOTS = (
    (("circle", "red", "large", "right", "quickly", "black", "checkered"), 10),
    (("square", "blue", "medium", "down", "quickly", "white", "striped"), 12),
    (("triangle", "yellow", "large", "left", "quickly", "grey", "noisy"), 9),
)
CUTS = [10, 22]


def _shot(attrs, frames):
    a = shapes.attributes_for_prompt(*attrs)
    return shapes.render(a, frames, H, W), shapes.caption(a)


def _three_shots():
    """uint8[31 48 64 3]: three shots cut at CUTS; and the shots' true captions."""
    parts = [_shot(a, n) for a, n in SHOTS]
    return np.concatenate([v for v, _ in parts]), [c for _, c in parts]


# Videos of different content differ in layout too (pHash compares luma structure, not colour).
LOOKS = {
    "circle": ("circle", "magenta", "large", "up-right", "quickly", "silver", "plain"),
    "square": ("square", "orange", "large", "down", "quickly", "charcoal", "checkered"),
    "triangle": ("triangle", "cyan", "large", "left", "quickly", "white", "striped"),
    "small": ("circle", "yellow", "small", "right", "quickly", "black", "noisy"),
}


def _moving(look="circle", frames=12):
    return _shot(LOOKS[look], frames)[0]


def _blur(video, k=2):
    """Box blur over (2k+1)^2 pixels, per frame (edge pixels repeated)."""
    x = np.pad(video.astype(np.float32), ((0, 0), (k, k), (k, k), (0, 0)), mode="edge")
    out = np.zeros(video.shape, np.float32)
    for dy in range(2 * k + 1):
        for dx in range(2 * k + 1):
            out += x[:, dy : dy + H, dx : dx + W]
    return np.round(out / (2 * k + 1) ** 2).astype(np.uint8)


def _spec(**kw):
    return clipper.ClipperSpec(**dict(dict(min_duration=0.5, max_duration=5.0), **kw))


def _job(input_path, out, **kw):
    kw.setdefault("clipper", _spec())
    return beam_pipeline.CurateConfig(str(input_path), str(out), **kw)


def test_three_shots_cut_within_a_frame_of_the_truth(tmp_path):
    video, _ = _three_shots()
    path = tmp_path / "three.mp4"
    video_io.write_video(path, video, fps=FPS)
    cuts = clipper.cut_frames({"path": str(path)}, _spec())
    assert len(cuts) == len(CUTS)
    assert all(abs(c - t) <= 1 for c, t in zip(cuts, CUTS)), cuts
    clips, short, stills, _, n = clipper.clips({"path": str(path)}, "three", _spec())
    assert n == 31 and not short and len(stills) == 3
    assert [(c["start_frame"], c["end_frame"]) for c in clips] == [(0, 10), (10, 22), (22, 31)]
    first = clips[1]
    assert first["id"] == "three#10-22" and first["video_id"] == "three"
    assert first["start"] == pytest.approx(1.0) and first["end"] == pytest.approx(2.2)
    assert (first["height"], first["width"], first["fps"]) == (H, W, FPS)
    assert first["duration"] == pytest.approx(1.2) and first["clip_frames"] == 12


def test_clip_windows_split_long_shots_and_set_short_ones_apart():
    clips, short = scenes.clip_windows([(0, 5), (5, 30), (30, 100)], 10.0, 1.0, 3.0)
    assert short == [(0, 5)]
    assert clips == [(5, 30), (30, 53), (53, 77), (77, 100)]  # 70 frames: 3 pieces <= 30
    assert scenes.shots(10, [0, 4, 10]) == [(0, 4), (4, 10)]
    # A lone spike among steady motion is a cut; the same level everywhere is not.
    d = np.full(40, 0.05, np.float32)
    d[0], d[17] = 0.0, 0.5
    assert scenes.detect_cuts(d) == [17]
    assert scenes.detect_cuts(np.full(40, 0.3, np.float32)) == []
    # Two spikes closer than min_gap are one cut (the stronger).
    d[18] = 0.45
    assert scenes.detect_cuts(d, min_gap=3) == [17]
    with pytest.raises(ValueError, match="min_duration"):
        clipper.ClipperSpec(min_duration=2.0, max_duration=1.0)


def test_blurred_copy_scores_lower_sharpness_and_measurements(tmp_path):
    video = _moving()
    video_io.write_video(tmp_path / "sharp.mp4", video, fps=FPS)
    video_io.write_video(tmp_path / "blurred.mp4", _blur(video), fps=FPS)
    (sharp,), *_ = clipper.clips({"path": str(tmp_path / "sharp.mp4")}, "s", _spec())
    (blurred,), *_ = clipper.clips({"path": str(tmp_path / "blurred.mp4")}, "b", _spec())
    assert blurred["sharpness"] < 0.5 * sharp["sharpness"], (blurred, sharp)
    assert sharp["brightness"] == pytest.approx(190 / 255, abs=0.08)  # a silver background
    assert sharp["motion"] > 0.004
    # Motion compares frames motion_lag apart, inside the clip only.
    track = measurements.FrameTrack(motion_lag=2)
    for i in range(6):
        frame = np.full((4, 4, 3), 10 * i, np.uint8)
        track.add(frame, frame[..., 0])
    assert measurements.measure(track, 0, 6)["motion"] == pytest.approx(20 / 255, rel=1e-5)
    assert measurements.measure(track, 3, 5)["motion"] == pytest.approx(10 / 255, rel=1e-5)
    g = np.zeros((8, 8), np.float32)
    g[:, 4:] = 255.0
    assert measurements.laplacian_variance(g) > 0 and measurements.laplacian_variance(g * 0) == 0


def test_phash_is_robust_to_reencoding_and_separates_content(tmp_path):
    a, b = _moving()[6], _moving("square")[6]
    video_io.write_video(tmp_path / "a.gif", a[None])  # a lossy re-encode (3-3-2 palette)
    a2 = video_io.read_video(tmp_path / "a.gif")[0]
    ha, ha2, hb = (dedup.phash(measurements.luma(x)) for x in (a, a2, b))
    assert dedup.hamming(ha, ha2) <= 8 < dedup.hamming(ha, hb)
    # Any two hashes within max_hamming bits share a band (the bucket of the candidate pairs).
    rng = np.random.default_rng(0)
    for _ in range(200):
        h = int(rng.integers(0, 2**63)) * 2 + int(rng.integers(0, 2))
        flips = rng.choice(64, size=int(rng.integers(0, 9)), replace=False)
        g = h ^ sum(1 << int(f) for f in flips)
        assert set(dedup.bands(h, 8)) & set(dedup.bands(g, 8))


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
    """One job over a folder: a three-shot video, a static and a moving video, a video with an
    exact copy and a re-encoded copy, a different video, a corrupt file; report on."""
    root = tmp_path_factory.mktemp("curate")
    videos = root / "videos"
    videos.mkdir()
    three, captions = _three_shots()
    video_io.write_video(videos / "three.mp4", three, fps=FPS)
    (videos / "three.txt").write_text("three shots")
    still = _moving("square")[:1]
    video_io.write_video(videos / "static.mp4", np.repeat(still, 12, 0), fps=FPS)
    video_io.write_video(videos / "moving.mp4", _moving("square"), fps=FPS)
    dup = _moving("triangle")
    video_io.write_video(videos / "dup_a.mp4", dup, fps=FPS)
    shutil.copy(videos / "dup_a.mp4", videos / "dup_b_exact.mp4")
    decoded = video_io.read_video(videos / "dup_a.mp4").astype(np.int16)
    reencoded = np.clip(decoded + 3, 0, 255).astype(np.uint8)  # brighter, encoded again
    video_io.write_video(videos / "dup_c_reencoded.mp4", reencoded, fps=FPS)
    video_io.write_video(videos / "other.mp4", _moving("small"), fps=FPS)
    (videos / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 truncated")
    out = root / "out"
    counts = beam_pipeline.run(_job(videos, out, report=True))
    rows = {r["id"]: r for r in manifest.read_jsonl(str(out / "manifest.jsonl"))}
    rejected = {r["id"]: r for r in manifest.read_jsonl(str(out / "rejected.jsonl"))}
    return dict(root=root, videos=videos, out=out, counts=counts, rows=rows, rejected=rejected)


def _by_video(rows, name):
    return [r for r in rows.values() if os.path.basename(r["path"]) == name]


def test_job_counts_and_the_three_shots(curated):
    counts, rows = curated["counts"], curated["rows"]
    assert counts["videos"] == 7 and counts["failed"] == 1 and counts["skipped"] == 0
    assert counts["clips"] == 9 and counts["kept"] + counts["rejected"] == 9
    assert counts["manifest_rows"] == counts["kept"] == len(rows)
    three = sorted(_by_video(rows, "three.mp4"), key=lambda r: r["start_frame"])
    assert [(r["start_frame"], r["end_frame"]) for r in three] == [(0, 10), (10, 22), (22, 31)]
    assert all(r["caption"] == "three shots" for r in three)  # the video's fields are kept
    for r in three:
        assert r["end"] - r["start"] == pytest.approx(r["duration"])
        assert len(r["phash"]) == 3 and all(len(h) == 16 for h in r["phash"])


def test_static_clip_rejected_and_moving_kept(curated):
    (static,) = _by_video(curated["rejected"], "static.mp4")
    assert static["reasons"] == ["static"] and static["motion"] < 1e-3
    (moving,) = _by_video(curated["rows"], "moving.mp4")
    assert moving["motion"] > filters.Thresholds().min_motion
    assert curated["counts"]["rejected_static"] == 1


def test_exact_and_reencoded_duplicates_removed_other_kept(curated):
    rows, rejected = curated["rows"], curated["rejected"]
    names = ("dup_a.mp4", "dup_b_exact.mp4", "dup_c_reencoded.mp4")
    kept = [r for n in names for r in _by_video(rows, n)]
    dropped = [r for n in names for r in _by_video(rejected, n)]
    assert len(kept) == 1 and len(dropped) == 2
    assert all(
        r["reasons"] == ["duplicate"] and r["duplicate_of"] == kept[0]["id"] for r in dropped
    )
    assert len(_by_video(rows, "other.mp4")) == 1
    assert curated["counts"]["rejected_duplicate"] == 2


def test_corrupt_file_goes_to_the_dead_letter(curated):
    (dead,) = manifest.read_jsonl(str(curated["out"] / "dead_letter-*.jsonl"))
    assert dead["path"].endswith("corrupt.mp4") and dead["stage"] == "decode"
    assert "corrupt.mp4" in dead["error"]


def test_report_has_histograms_and_thumbnails(curated):
    page = (curated["out"] / "report.html").read_text()
    assert page.count("<svg") >= 4 and "Rejected: static" in page and "Rejected: duplicate" in page
    for row in list(curated["rows"].values()) + list(curated["rejected"].values()):
        thumb = curated["out"] / row["thumbnail"]
        assert thumb.is_file() and f'src="{row["thumbnail"]}"' in page
        assert video_io.read_frames(thumb).shape[1:] == (H, W, 3)  # analysis size: <= 96


def test_rerun_processes_nothing_new_and_new_videos_meet_earlier_clips(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    video_io.write_video(videos / "a.mp4", _moving(), fps=FPS)
    (videos / "bad.mp4").write_bytes(b"not a video")
    out = tmp_path / "out"
    cfg = _job(videos, out)
    first = beam_pipeline.run(cfg)
    assert first["videos"] == 1 and first["kept"] == 1 and first["failed"] == 1
    # The program itself, with a Beam option passed through: nothing new to do.
    r = subprocess.run(
        [sys.executable, "-m", "sora_jax.curate", "--input", str(videos), "--output_dir"]
        + [str(out), "--config.clips.min_duration=0.5", "--runner=DirectRunner"],
        check=True,
        capture_output=True,
        text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    again = json.loads(r.stdout.strip().splitlines()[-1])
    assert again["videos"] == again["clips"] == again["failed"] == 0 and again["skipped"] == 2
    assert again["manifest_rows"] == 1 and len(manifest.read_jsonl(str(out / "dead_letter-*"))) == 1
    # New files: a copy of the clip kept before (the earlier clip wins) and a new video.
    shutil.copy(videos / "a.mp4", videos / "a_copy.mp4")
    video_io.write_video(videos / "b.mp4", _moving("square"), fps=FPS)
    third = beam_pipeline.run(cfg)
    assert third["videos"] == 2 and third["skipped"] == 2 and third["kept"] == 1
    (dup,) = manifest.read_jsonl(str(out / "rejected.jsonl"))
    assert dup["path"].endswith("a_copy.mp4") and dup["duplicate_of"].endswith("a.mp4#0-12")
    assert third["manifest_rows"] == 2


_CURATE_FLAGS = ("config", "input", "output_dir", "report", "retry_failed")


@pytest.fixture
def curate():
    """sora_jax.curate with its flags, although another entry point imported in this process
    (e.g. sora_jax.train) defined flags of the same names; theirs are put back afterwards."""
    from absl import flags

    saved = {n: flags.FLAGS[n] for n in _CURATE_FLAGS if n in flags.FLAGS}
    for n in saved:
        delattr(flags.FLAGS, n)
    sys.modules.pop("sora_jax.curate", None)
    module = importlib.import_module("sora_jax.curate")
    yield module
    for n in _CURATE_FLAGS:
        if n in flags.FLAGS:
            delattr(flags.FLAGS, n)
    for n, flag in saved.items():
        flags.FLAGS[n] = flag
    sys.modules.pop("sora_jax.curate", None)


def test_cli_config_overrides_beam_options_and_errors(tmp_path, monkeypatch, capsys, curate):
    jobs = []
    monkeypatch.setattr(
        beam_pipeline, "run", lambda cfg, options: jobs.append((cfg, options)) or {"kept": 0}
    )

    def cli(*args):
        return curate.main(curate.parse_flags(["curate", *args]))

    args = ["--input", "v", "--output_dir", "o", "--config.filters.min_motion=0.02"]
    args += ["--config.dedup.enabled=false", "--config.clips.max_duration=4", "--report"]
    assert cli(*args, "--runner=DirectRunner", "--direct_num_workers", "2") == {"kept": 0}
    assert json.loads(capsys.readouterr().out) == {"kept": 0}
    cfg, options = jobs[-1]
    assert cfg.thresholds.min_motion == 0.02 and not cfg.dedup and cfg.report
    assert cfg.clipper.max_duration == 4.0 and (cfg.input, cfg.output_dir) == ("v", "o")
    assert options.get_all_options()["direct_num_workers"] == 2
    cli("--input", "v", "--output_dir", "o")  # every parse starts from the defaults
    cfg, _ = jobs[-1]
    assert cfg.thresholds == filters.Thresholds() and cfg.dedup and not cfg.report
    assert cfg.clipper == clipper.ClipperSpec()
    for bad, message in (
        (["--output_dir", "o"], "--input is required"),
        (["--input", "v"], "--output_dir is required"),
        (["--input", "v", "--output_dir", "o", "--config.filters.nope=1"], "no such key"),
        (["--input", "v", "--output_dir", "o", "--config.scene.window=x"], "not a int"),
        (["--input", "v", "--output_dir", "o", "--config.models.text_model=/m"], "no model folder"),
    ):
        with pytest.raises(app.UsageError, match=message):
            cli(*bad)
    assert len(jobs) == 2


def test_model_scores_are_skipped_without_a_model(tmp_path, curated):
    assert all("aesthetic" not in r and "text_area" not in r for r in curated["rows"].values())
    assert not scorers.ScorerSpec().active
    assert scorers.ScorerSpec().load().score([np.zeros((4, 4, 3), np.uint8)]) == [{}]
    with pytest.raises(ValueError, match="no model folder"):
        scorers.ScorerSpec(aesthetic_model=str(tmp_path / "missing"))
    (tmp_path / "clip").mkdir()
    with pytest.raises(ValueError, match="aesthetic_head.npz"):
        scorers.ScorerSpec(aesthetic_model=str(tmp_path / "clip"))
    # Unmeasured scores never reject; measured ones do.
    row = dict(curated["rows"][next(iter(curated["rows"]))])
    t = filters.Thresholds(min_aesthetic=5.0, max_text_area=0.1)
    assert filters.reasons(row, t) == []
    assert filters.reasons(dict(row, aesthetic=4.0, text_area=0.5), t) == [
        "low_aesthetic",
        "too_much_text",
    ]


def test_curate_then_recaption_then_build_dataset(tmp_path):
    """The kept clips' manifest goes unchanged into recaption (built-in captioner: each clip's
    caption is its own shot's) and build_dataset (one record per clip, its window kept)."""
    pytest.importorskip("tensorflow_datasets")
    from sora_jax.captioning import beam_pipeline as recaption_pipeline
    from sora_jax.captioning.captioner_spec import CaptionerSpec
    from sora_jax.data import tfds_builder

    videos = tmp_path / "raw"
    videos.mkdir()
    three, captions = _three_shots()
    video_io.write_video(videos / "three.mp4", three, fps=FPS)
    video_io.write_video(videos / "static.mp4", np.repeat(three[:1], 12, 0), fps=FPS)
    curated = tmp_path / "curated"
    counts = beam_pipeline.run(_job(videos, curated))
    assert counts["kept"] == 3 and counts["rejected_static"] == 1
    clips_manifest = str(curated / "manifest.jsonl")

    recaptioned = tmp_path / "recaptioned"
    cfg = recaption_pipeline.RecaptionConfig(clips_manifest, str(recaptioned), CaptionerSpec())
    rc = recaption_pipeline.run(cfg)
    assert rc["captioned"] == 3 and rc["failed"] == 0
    rows = sorted(
        manifest.read_jsonl(str(recaptioned / "manifest.jsonl")), key=lambda r: r["start_frame"]
    )
    assert [r["dense_caption"] for r in rows] == captions  # frames of each clip's window only

    builder = tfds_builder.build(str(recaptioned / "manifest.jsonl"), str(tmp_path / "tfds"))
    assert builder.info.splits["train"].num_examples == 3 and builder.info.metadata["num_bad"] == 0
    source = builder.as_data_source()["train"]
    records = sorted((source[i] for i in range(3)), key=lambda r: float(r["start"]))
    for record, row, caption in zip(records, rows, captions):
        assert record["caption"].decode() == caption  # the dense caption (no other caption)
        assert float(record["start"]) == pytest.approx(row["start"], abs=1e-6)
        assert float(record["end"]) == pytest.approx(row["end"], abs=1e-6)
        assert int(record["num_frames"]) == 31
        frames = recaption_pipeline.tfds_input.read_frames(record)
        assert len(frames) == row["clip_frames"]


def test_report_histogram_svg():
    svg = report.histogram_svg([0.1, 0.2, 0.2], [0.9], bins=4, marks=[0.5])
    assert svg.startswith("<svg") and svg.count("<rect") == 2 and "stroke-dasharray" in svg
    assert report.histogram_svg([3.0], [], log=True).count("<rect") == 1
    # A threshold far from the data is not drawn (it would squash the bars into one bin).
    assert "stroke-dasharray" not in report.histogram_svg([0.01, 0.02], [0.015], marks=[1.0])


def _tiny_aesthetic_model(path):
    """A randomly initialised CLIP vision tower (32x32 input) saved as a transformers folder,
    with its image processor and a random linear head (nothing downloaded)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = transformers.CLIPVisionConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        projection_dim=16,
    )
    torch.manual_seed(0)
    transformers.CLIPVisionModelWithProjection(config).save_pretrained(path)
    transformers.CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    ).save_pretrained(path)
    rng = np.random.default_rng(0)
    np.savez(
        os.path.join(path, scorers.HEAD), w=rng.normal(size=16).astype(np.float32), b=np.float32(5)
    )
    return str(path)


def test_aesthetic_scores_batched_through_the_job(tmp_path):
    model = _tiny_aesthetic_model(tmp_path / "clip")
    videos = tmp_path / "videos"
    videos.mkdir()
    for look in LOOKS:
        video_io.write_video(videos / f"{look}.mp4", _moving(look), fps=FPS)
    spec = scorers.ScorerSpec(aesthetic_model=model, batch_size=3)
    counts = beam_pipeline.run(_job(videos, tmp_path / "out", scorers=spec, dedup=False))
    assert counts["kept"] == 4 and counts["max_score_batch"] == 3  # batches, not one by one
    rows = manifest.read_jsonl(str(tmp_path / "out" / "manifest.jsonl"))
    alone = scorers.AestheticScorer(model)
    for row in rows:
        (_, track) = clipper.track_video(row["path"], _spec())
        still = track.still(row["start_frame"], row["end_frame"])
        assert row["aesthetic"] == pytest.approx(float(alone.score([still])[0]), abs=1e-4)
    assert len({round(r["aesthetic"], 4) for r in rows}) == 4  # image-dependent


def test_a_failing_score_batch_is_retried_item_by_item():
    class Models:
        def score(self, stills):
            if any(s.mean() > 100 for s in stills):
                raise ValueError("cannot score a bright still")
            return [{"aesthetic": float(s.mean())} for s in stills]

    fn = beam_pipeline.Score(scorers.ScorerSpec())
    fn._loaded = beam_pipeline._Loaded(Models())
    dark, bright = np.zeros((2, 2, 3), np.uint8), np.full((2, 2, 3), 200, np.uint8)
    out = list(fn.process([({"id": "a", "path": "a"}, dark), ({"id": "b", "path": "b"}, bright)]))
    assert out[0] == {"id": "a", "path": "a", "aesthetic": 0.0}
    assert out[1].tag == "failed" and out[1].value["id"] == "b"
    assert out[1].value["stage"] == "score" and "bright still" in out[1].value["error"]


def _tiny_text_model(path):
    """A randomly initialised YOLOS detector (labels 'text', 'logo') saved as a transformers
    folder with its image processor; weights perturbed so that boxes differ per image."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = transformers.YolosConfig(
        image_size=[32, 32],
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        num_detection_tokens=6,
        num_labels=2,
        id2label={0: "text", 1: "logo"},
        label2id={"text": 0, "logo": 1},
    )
    torch.manual_seed(0)
    model = transformers.YolosForObjectDetection(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.15 * torch.randn(p.shape))
    model.save_pretrained(path)
    transformers.YolosImageProcessor(
        size={"shortest_edge": 32, "longest_edge": 64}
    ).save_pretrained(path)
    return str(path)


def test_box_union_fraction_counts_overlaps_once():
    boxes = np.array([[0, 0, 4, 2], [2, 0, 6, 2], [-3, 9, 1, 20]], np.float32)  # 8 + 8 - 4 + 1
    assert scorers.box_union_fraction(boxes, 10, 10) == pytest.approx(13 / 100)
    assert scorers.box_union_fraction(np.zeros((0, 4)), 4, 4) == 0.0


def test_text_area_scores_through_the_job_and_filter(tmp_path):
    model = _tiny_text_model(tmp_path / "det")
    with pytest.raises(ValueError, match=r"text_labels='caption' matches none of .*'logo', 'text'"):
        scorers.TextAreaScorer(model, labels="caption")
    videos = tmp_path / "videos"
    videos.mkdir()
    for look in LOOKS:
        video_io.write_video(videos / f"{look}.mp4", _moving(look), fps=FPS)
    spec = scorers.ScorerSpec(text_model=model, text_threshold=0.0, batch_size=2)
    counts = beam_pipeline.run(_job(videos, tmp_path / "out", scorers=spec, dedup=False))
    assert counts["kept"] == 4
    rows = manifest.read_jsonl(str(tmp_path / "out" / "manifest.jsonl"))
    alone = scorers.TextAreaScorer(model, threshold=0.0)
    both = scorers.TextAreaScorer(model, labels="text|logo", threshold=0.0)
    for row in rows:
        (_, track) = clipper.track_video(row["path"], _spec())
        still = track.still(row["start_frame"], row["end_frame"])
        (boxes,) = alone.boxes([still])
        assert len(boxes) > 0 and row["text_area"] == pytest.approx(
            scorers.box_union_fraction(boxes, *still.shape[:2]), abs=1e-6
        )
        assert 0.0 < row["text_area"] <= float(both.score([still])[0]) <= 1.0
    cut = sorted(r["text_area"] for r in rows)[1]
    t = filters.Thresholds(max_text_area=cut)
    rejected = [r for r in rows if "too_much_text" in filters.reasons(r, t)]
    assert len(rejected) == sum(r["text_area"] > cut for r in rows) >= 1
