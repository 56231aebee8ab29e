"""Recaptioning: the built-in captioner's accuracy, and the Beam job (DirectRunner) with the
built-in captioner and with a tiny randomly initialised transformers captioner."""

import csv
import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from absl import app

from sora_jax.captioning import beam_pipeline, manifest, shapes_captioner, tfds_input
from sora_jax.captioning.captioner_spec import CaptionerSpec
from sora_jax.data import shapes, video_io
from sora_jax.data import batches

beam = pytest.importorskip("apache_beam")


def _recaption_cli(*args):
    """The recaption CLI in this process, as `python -m sora_jax.recaption args...` runs it."""
    from sora_jax import recaption

    return recaption.main(recaption.parse_flags(["recaption", *args]))


def test_cli_flags_and_beam_options(monkeypatch, capsys):
    jobs = []

    def run(cfg, options):
        jobs.append((cfg, options.get_all_options()))
        return {"captioned": 0}

    monkeypatch.setattr(beam_pipeline, "run", run)
    args = ["--input", "m.jsonl", "--output_dir", "out", "--captioner", "hf", "--model_path=/m"]
    args += ["--prompt", "Describe.", "--num_frames=4", "--batch_size", "2", "--retry_failed"]
    # What no flag takes goes to Beam, in order (also as `--option value`).
    assert _recaption_cli(*args, "--runner=DirectRunner", "--direct_num_workers", "2") == {
        "captioned": 0
    }
    assert json.loads(capsys.readouterr().out) == {"captioned": 0}
    cfg, options = jobs[-1]
    assert (cfg.input, cfg.output_dir, cfg.batch_size, cfg.retry_failed) == (
        "m.jsonl",
        "out",
        2,
        True,
    )
    assert cfg.captioner == CaptionerSpec("hf", "/m", prompt="Describe.", num_frames=4)
    assert cfg.tfds is None
    assert options["runner"] == "DirectRunner" and options["direct_num_workers"] == 2
    # Every run starts from the defaults.
    _recaption_cli("--tfds_data_dir", "/d", "--split", "test", "--output_dir", "out")
    cfg, options = jobs[-1]
    assert cfg.input == "" and cfg.tfds == tfds_input.TfdsInput("/d", "video_clips", "test")
    assert cfg.captioner == CaptionerSpec() and cfg.batch_size == 8 and not cfg.retry_failed
    assert options["runner"] is None
    with pytest.raises(app.UsageError, match="needs the path"):
        _recaption_cli("--input", "m.jsonl", "--output_dir", "out", "--captioner", "hf")
    with pytest.raises(app.UsageError, match="exactly one input"):
        _recaption_cli("--output_dir", "out")
    with pytest.raises(app.UsageError, match="--output_dir is required"):
        _recaption_cli("--input", "m.jsonl")
    with pytest.raises(SystemExit):
        _recaption_cli("--input", "m.jsonl", "--output_dir", "out", "--captioner=bogus")
    assert "should be one of <builtin|hf>" in capsys.readouterr().err
    assert len(jobs) == 2
    # The program itself (absl app.run): a usage error exits with its message.
    r = subprocess.run(
        [sys.executable, "-m", "sora_jax.recaption", "--output_dir", "out"],
        check=False,
        capture_output=True,
        text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    assert r.returncode == 2 and "exactly one input" in r.stderr  # 2: a usage error


def _held_out(n, seed, mp4_dir=None):
    ds = shapes.MovingShapes(seed, n, (1, 9, 17), ((32, 32), (32, 48), (48, 32)))
    videos, attrs = [], []
    for i in range(n):
        e = ds[i]
        video = e["video"]
        if mp4_dir is not None:
            path = os.path.join(mp4_dir, f"{i}.mp4")
            video_io.write_video(path, video)
            video = video_io.read_video(path)
        videos.append(video)
        attrs.append(e["attributes"])
    return videos, attrs


def test_builtin_captioner_accuracy_after_mp4(tmp_path):
    videos, attrs = _held_out(48, seed=777, mp4_dir=tmp_path)
    result = shapes_captioner.accuracy(videos, attrs)
    # Measured on 1000 such videos: 0.994 (benchmarks/RESULTS.md, "Captioner accuracy").
    assert result["attribute_accuracy"] >= 0.95, result
    for name in ("shape", "colour", "size", "background", "texture", "direction"):
        assert result[f"{name}_accuracy"] >= 0.9, result
    assert result["num_videos"] == 48


def test_builtin_captions_are_the_grammar_of_the_true_attributes():
    a = shapes.attributes_for_prompt(
        "triangle", "cyan", "large", "down-right", "quickly", "charcoal", "striped"
    )
    a["start"] = (9.0, 9.0)
    video = shapes.render(a, 17, 48, 48)
    (text,) = shapes_captioner.ShapesCaptioner().caption([video])
    assert text == shapes.caption(a)
    (dense,) = shapes_captioner.ShapesCaptioner("detailed").caption([video])
    assert dense == (
        "a large cyan triangle moves down-right quickly from the top left to the centre "
        "on a charcoal striped background"
    )
    image = shapes.render(shapes.attributes_for_prompt("square", "red", "small"), 1, 32, 32)
    assert shapes_captioner.ShapesCaptioner().caption([image]) == [
        "a small red square on a grey background"
    ]


def test_builtin_captioner_rejects_videos_without_a_shape():
    with pytest.raises(ValueError, match="no moving shape"):
        shapes_captioner.ShapesCaptioner().caption([np.full((5, 16, 16, 3), 128, np.uint8)])
    with pytest.raises(ValueError, match="style"):
        shapes_captioner.ShapesCaptioner("poetic")


def _make_manifest(tmp_path, n=5, fmt="jsonl"):
    """n moving-shapes mp4 files + one corrupt file; the manifest lists them (relative paths)."""
    videos_dir = tmp_path / "videos"
    videos_dir.mkdir()
    ds = shapes.MovingShapes(5, n, (9,), ((32, 32), (32, 48)), image_fraction=0.0)
    rows, truth = [], {}
    for i in range(n):
        e = ds[i]
        video_io.write_video(videos_dir / f"v{i}.mp4", e["video"])
        rows.append({"path": f"videos/v{i}.mp4", "caption": f"clip {i}"})
        truth[f"videos/v{i}.mp4"] = e["caption"]
    (videos_dir / "bad.mp4").write_bytes(b"not a video at all")
    rows.append({"path": "videos/bad.mp4"})
    path = tmp_path / f"manifest.{fmt}"
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["path", "caption"])
            w.writeheader()
            w.writerows(rows)
    return str(path), truth


def _lines(pattern):
    return manifest.read_jsonl(pattern)


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_beam_job_captions_dead_letters_and_resumes(tmp_path, fmt):
    path, truth = _make_manifest(tmp_path, fmt=fmt)
    out = str(tmp_path / "out")
    cfg = beam_pipeline.RecaptionConfig(path, out, CaptionerSpec("builtin"), batch_size=2)
    counts = beam_pipeline.run(cfg)
    assert counts["captioned"] == 5 and counts["failed"] == 1 and counts["skipped"] == 0
    rows = _lines(os.path.join(out, "manifest.jsonl"))
    assert len(rows) == 5
    for row in rows:
        rel = os.path.relpath(row["path"], str(tmp_path))
        assert row["dense_caption"] == truth[rel]  # measured from pixels = the true caption
        assert row["caption"] == f"clip {rel[len('videos/v') : -4]}"  # the original kept
        assert row["captioner"] == "builtin-shapes-grammar"
    (dead,) = _lines(os.path.join(out, "dead_letter-*.jsonl"))
    assert dead["path"].endswith("bad.mp4") and dead["stage"] == "decode"
    assert "ValueError" in dead["error"] and "bad.mp4" in dead["error"]
    if fmt == "csv":
        return  # resuming does not depend on the input format

    again = beam_pipeline.run(cfg)
    assert again["captioned"] == 0 and again["failed"] == 0 and again["decoded"] == 0
    assert again["skipped"] == 6 and again["manifest_rows"] == 5
    assert len(_lines(os.path.join(out, "dead_letter-*.jsonl"))) == 1

    # A row added to the manifest is the only new work (with the failure, retried).
    a = shapes.attributes_for_prompt("square", "blue", "large", "left", "slowly", "white")
    video_io.write_video(tmp_path / "videos" / "new.mp4", shapes.render(a, 9, 32, 32))
    with open(path, "a") as f:
        f.write(json.dumps({"path": "videos/new.mp4", "id": "new"}) + "\n")
    retry = beam_pipeline.run(dataclasses.replace(cfg, retry_failed=True))
    assert retry["captioned"] == 1 and retry["failed"] == 1 and retry["skipped"] == 5
    rows = {r["id"]: r for r in _lines(os.path.join(out, "manifest.jsonl"))}
    assert len(rows) == 6 and rows["new"]["dense_caption"] == shapes.caption(a)


def _tiny_transformers_captioner(path):
    """A randomly initialised ViT -> GPT-2 VisionEncoderDecoder with a word-level tokenizer of
    the grammar's words, saved like a Hugging Face folder (nothing downloaded). Weights are
    scaled up and the special tokens' logits zeroed so that it writes image-dependent words."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["[PAD]", "[BOS]", "[EOS]", "[UNK]"] + list(shapes.VOCABULARY)
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", bos_token="[BOS]", eos_token="[EOS]"
    )
    encoder = transformers.ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
    )
    decoder = transformers.GPT2Config(
        vocab_size=len(words),
        n_positions=64,
        n_embd=32,
        n_layer=1,
        n_head=2,
        add_cross_attention=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    config = transformers.VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    config.decoder_start_token_id, config.pad_token_id, config.eos_token_id = 1, 0, 2
    torch.manual_seed(0)
    model = transformers.VisionEncoderDecoderModel(config)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(8.0)
        model.decoder.lm_head.weight[:4] = 0.0
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    return str(path)


def test_transformers_captioner_through_the_pipeline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model_path = _tiny_transformers_captioner(tmp_path / "model")
    from sora_jax.captioning.hf_captioner import HFCaptioner

    captioner = HFCaptioner(model_path, max_new_tokens=6)
    path, _ = _make_manifest(tmp_path, n=5)
    out = str(tmp_path / "out")
    spec = CaptionerSpec("hf", path=model_path, max_new_tokens=6)
    counts = beam_pipeline.run(beam_pipeline.RecaptionConfig(path, out, spec, batch_size=3))
    assert counts["captioned"] == 5 and counts["failed"] == 1
    assert counts["max_batch_size"] == 3  # the model ran on batches, not item by item
    rows = _lines(os.path.join(out, "manifest.jsonl"))
    assert len(rows) == 5 and all(r["captioner"] == f"hf:{model_path}" for r in rows)
    for row in rows:  # each caption is its own video's (batched = alone; order kept)
        (alone,) = captioner.caption([manifest.read_frames(row["path"], 1)])
        assert row["dense_caption"] == alone and len(alone.split()) == 6
    assert len({r["dense_caption"] for r in rows}) >= 3  # image-dependent, not constant
    with pytest.raises(OSError):
        HFCaptioner(str(tmp_path / "no_such_model"))


def test_recaptioned_manifest_replaces_training_captions(tmp_path):
    from sora_jax import config as config_lib
    from sora_jax.captioning import export_shapes

    c = config_lib.load(os.path.join(os.path.dirname(__file__), "..", "configs", "tiny.py"))
    c.data.seed = 3
    path = export_shapes.export(c, str(tmp_path / "set"), 3)
    rows = manifest.read_jsonl(path)
    source = shapes.MovingShapes(3, c.data.num_examples, c.data.frame_choices, c.data.resolutions)
    examples = [source[i] for i in range(3)]
    for i, row in enumerate(rows):
        assert row["id"] == f"moving_shapes/3/{i}" and row["caption"] == examples[i]["caption"]
        frames = video_io.read_video(tmp_path / "set" / row["path"])
        assert frames.shape == examples[i]["video"].shape
    recaptioned = tmp_path / "recaptioned.jsonl"
    recaptioned.write_text(
        json.dumps({"id": "moving_shapes/3/1", "dense_caption": "a new caption"}) + "\n"
    )
    assert batches.captions_of(c, examples) == [e["caption"] for e in examples]  # off
    c.data.captions_manifest = str(recaptioned)
    assert batches.captions_of(c, examples) == [
        examples[0]["caption"],
        "a new caption",
        examples[2]["caption"],
    ]
    recaptioned.write_text(json.dumps({"id": "moving_shapes/3/1"}) + "\n")
    with pytest.raises(ValueError, match="needs 'id' and 'dense_caption'"):
        batches.captions_of(c, examples)
    c.data.captions_manifest = str(tmp_path / "missing.jsonl")
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        batches.captions_of(c, examples)


def test_tfds_clip_window_frames_are_evenly_spaced(tmp_path):
    from sora_jax.captioning import tfds_input

    video = shapes.MovingShapes(2, 1, (17,), ((32, 32),), image_fraction=0.0)[0]["video"]
    video_io.write_video(tmp_path / "v.mp4", video, fps=8)
    decoded = video_io.read_video(tmp_path / "v.mp4")
    data = np.frombuffer((tmp_path / "v.mp4").read_bytes(), np.uint8)
    record = dict(video=data, num_frames=17, fps=8.0, start=0.5, end=1.5)  # frames 4 .. 11
    np.testing.assert_array_equal(tfds_input.read_frames(record, 3), decoded[[4, 8, 11]])
    np.testing.assert_array_equal(tfds_input.read_frames(record, 0), decoded[4:12])
    np.testing.assert_array_equal(manifest.evenly_spaced(5, 3), [0, 2, 4])
    np.testing.assert_array_equal(manifest.evenly_spaced(2, 3), [0, 1])


def test_beam_job_over_a_tfds_dataset_and_rerun(tmp_path, capsys):
    pytest.importorskip("tensorflow_datasets")
    from sora_jax.captioning import tfds_input
    from sora_jax.data import tfds_builder

    folder = tfds_builder.export_moving_shapes(
        tmp_path / "src", 4, seed=5, frame_choices=(9,), resolutions=((32, 32), (32, 48))
    )
    data_dir = str(tmp_path / "tfds")
    tfds_builder.build(folder, data_dir)
    out = str(tmp_path / "out")
    source = tfds_input.TfdsInput(data_dir)
    cfg = beam_pipeline.RecaptionConfig("", out, CaptionerSpec("builtin"), 3, tfds=source)
    counts = beam_pipeline.run(cfg)
    assert counts["captioned"] == 4 and counts["failed"] == 0 and counts["skipped"] == 0
    assert counts["manifest_rows"] == 4 and counts["max_batch_size"] == 3
    rows = _lines(os.path.join(out, "manifest.jsonl"))
    assert sorted(r["id"] for r in rows) == [f"video_clips/train/{i}" for i in range(4)]
    truth = shapes.MovingShapes(5, 4, (9,), ((32, 32), (32, 48)))
    for row in rows:
        assert row["id"] == f"video_clips/train/{row['tfds_index']}"
        i = int(os.path.basename(row["path"])[:-4])  # the exported file's example index
        assert row["caption"] == truth[i]["caption"]  # the original caption is kept
        assert row["dense_caption"] == truth[i]["caption"]  # measured from the stored clip
        assert row["num_frames"] == 9 and row["end"] == pytest.approx(9 / 8)
    assert not _lines(os.path.join(out, "dead_letter-*.jsonl"))

    # The CLI over the same dataset (Beam options passed through): nothing new to do.
    capsys.readouterr()
    again = _recaption_cli(
        "--tfds_data_dir", data_dir, "--output_dir", out, "--runner=DirectRunner"
    )
    assert again["captioned"] == 0 and again["decoded"] == 0 and again["skipped"] == 4
    assert again["manifest_rows"] == 4
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["skipped"] == 4
    with pytest.raises(ValueError, match="suffix"):
        beam_pipeline.run(beam_pipeline.RecaptionConfig(str(tmp_path / "m.txt"), out))
    with pytest.raises(app.UsageError, match="exactly one input"):
        _recaption_cli("--input", "m.jsonl", "--tfds_data_dir", data_dir, "--output_dir", out)
    with pytest.raises(ValueError, match="cannot open TFDS dataset 'video_clips'.*missing"):
        beam_pipeline.run(
            dataclasses.replace(cfg, tfds=tfds_input.TfdsInput(str(tmp_path / "missing")))
        )
