"""Curation: raw videos -> scene-cut clips with measurements, filtered and de-duplicated.

python -m sora_jax.curate --input=/videos --output_dir=curated/ [--report] \
    [--config=configs/curate.py] [--config.filters.min_motion=0.01 ...] [Beam options]

Every knob of the job is here; `--config.<key>=<value>` overrides any of them. Durations are in
seconds; motion, brightness and text area are fractions of full scale (0..1); sharpness is the
variance of the Laplacian of the luma (0..255 scale) at `decode.detail_size`.
"""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()

    # Decoding: every frame is decoded once and downscaled (aspect kept) twice: `analysis_size`
    # (long side, pixels) for histograms, motion, hashes and thumbnails, and `detail_size` for
    # sharpness, where blur survives the downscale. `interpolation` is swscale's: AREA
    # averages (no aliasing in the features); FAST_BILINEAR is ~25 % cheaper.
    c.decode = ml_collections.ConfigDict()
    c.decode.analysis_size = 96
    c.decode.detail_size = 480
    c.decode.interpolation = "AREA"

    # Measurements: motion compares frames `motion_seconds` apart (rounded to whole frames,
    # at least one), so a clip's score does not depend on its frame rate.
    c.measure = ml_collections.ConfigDict()
    c.measure.motion_seconds = 0.1

    # Scene detection: a cut where the HSV histogram distance between consecutive frames
    # exceeds median + mad_factor * MAD of the `window` frames around it (and min_distance);
    # cuts closer than `min_gap` frames to a stronger one are dropped (flashes).
    c.scene = ml_collections.ConfigDict()
    c.scene.hue_bins = 16
    c.scene.sat_bins = 8
    c.scene.val_bins = 8
    c.scene.window = 15
    c.scene.mad_factor = 6.0
    c.scene.min_distance = 0.15
    c.scene.min_gap = 3

    # Clips: shots shorter than min_duration are rejected ('too_short'); longer than
    # max_duration are split into equal pieces no longer than it.
    c.clips = ml_collections.ConfigDict()
    c.clips.min_duration = 1.0
    c.clips.max_duration = 10.0

    # Filters (a clip failing any is rejected with every reason it fails).
    c.filters = ml_collections.ConfigDict()
    c.filters.min_short_side = 0  # pixels
    c.filters.min_fps = 0.0
    c.filters.min_motion = 0.004  # mean |luma difference| over motion_seconds, 0..1
    c.filters.max_motion = 1.0
    c.filters.min_sharpness = 0.0
    c.filters.min_brightness = 0.03
    c.filters.max_brightness = 0.97
    c.filters.min_aesthetic = 0.0  # only when an aesthetic model is given
    c.filters.max_text_area = 1.0  # only when a text model is given

    # Near-duplicates: pHash (64-bit DCT) of `keyframes` frames per clip; two clips are
    # duplicates when every keyframe pair is within max_hamming bits. The larger (then longer)
    # clip is kept; clips kept by earlier runs always win.
    c.dedup = ml_collections.ConfigDict()
    c.dedup.enabled = True
    c.dedup.keyframes = 3
    c.dedup.max_hamming = 8

    # Model scores, skipped unless a path is given: the aesthetic model is a local transformers
    # CLIP vision folder (CLIPVisionModelWithProjection) with `aesthetic_head.npz` (w f32[d],
    # b f32[]) beside it, scoring the unit-norm image embedding of a clip's middle frame.
    c.models = ml_collections.ConfigDict()
    # The text model is a local transformers object-detection folder
    # (AutoModelForObjectDetection + image processor): text_area is the fraction of the middle
    # frame inside the boxes whose label matches text_labels (regex) scored >= text_threshold.
    c.models.aesthetic_model = ""
    c.models.text_model = ""
    c.models.text_labels = "text"
    c.models.text_threshold = 0.5
    c.models.batch_size = 16

    # Job: re-runs skip videos done before (and failures, unless retry_failed).
    c.retry_failed = False
    c.report = False
    c.report_thumbnails = 24  # per section (kept, and each rejection reason)
    return c
