"""The curation job on Apache Beam (DirectRunner locally; Dataflow, Flink, Spark through
standard pipeline options).

  manifest lines (or a folder's videos) -> (video key, row) -> skip videos done before
    -> SplitAndMeasure (per video: one streaming decode, scene cuts, clip windows, measurements;
       a progress line per worker)        --failed--> dead letter
                                          --short---> rejected (too_short)
                                          --video---> videos-<run> (one summary row per video)
    -> BatchElements -> Score (model scores; models loaded once per worker process in setup)
    -> Filter (thresholds)                --fails---> rejected (the reasons)
    -> Dedup: pHash band buckets (with the clips kept by earlier runs, which always win)
                                          --dup-----> rejected (duplicate, duplicate_of)
    -> clips-<run>-*.jsonl

Every run writes its own shards in `output_dir`; a re-run reads the earlier `videos` and
`dead_letter` shards first and processes only videos in neither (`retry_failed`: failures are
retried). `merge` then writes `manifest.jsonl` (every kept clip, sorted by id: the input of
recaption and build_dataset) and `rejected.jsonl`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
import time

import apache_beam as beam
import ml_collections
from apache_beam.metrics.metric import Metrics, MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.utils import shared

from sora_jax.captioning import beam_pipeline as recaption_pipeline
from sora_jax.captioning import manifest
from sora_jax.curation import clipper, dedup, filters, report, scorers
from sora_jax.data import manifest as data_manifest
from sora_jax.data import video_io
from sora_jax.logging import progress

CLIPS = "clips"
REJECTED = "rejected"
VIDEOS = "videos"
DEAD_LETTER = "dead_letter"
MERGED = "manifest.jsonl"
MERGED_REJECTED = "rejected.jsonl"
THUMBS = "thumbs"
NS = "curate"
_FAILED, _SHORT, _VIDEO, _DUP = "failed", "short", "video", "dup"
COUNTERS = ("videos", "frames", "clips", "kept", "rejected", "failed", "skipped")


@dataclasses.dataclass(frozen=True)
class CurateConfig:
    """A curation job: `input` (a manifest .jsonl / .csv, or a folder of videos with optional
    `<name>.txt` captions), `output_dir` and the settings of configs/curate.py."""

    input: str
    output_dir: str
    clipper: clipper.ClipperSpec = clipper.ClipperSpec()
    thresholds: filters.Thresholds = filters.Thresholds()
    scorers: scorers.ScorerSpec = scorers.ScorerSpec()
    dedup: bool = True
    max_hamming: int = 8
    retry_failed: bool = False
    report: bool = False
    report_thumbnails: int = 24

    def __post_init__(self):
        if not self.input or not self.output_dir:
            raise ValueError("a curation job needs an input and an output_dir")
        if not 0 <= self.max_hamming < 64:
            raise ValueError(f"dedup.max_hamming must be in [0, 64), got {self.max_hamming}")

    @classmethod
    def from_config(cls, input: str, output_dir: str, c: ml_collections.ConfigDict):
        return cls(
            input,
            output_dir,
            clipper.ClipperSpec.from_config(c),
            filters.Thresholds.from_config(c.filters),
            scorers.ScorerSpec.from_config(c.models),
            c.dedup.enabled,
            c.dedup.max_hamming,
            c.retry_failed,
            c.report,
            c.report_thumbnails,
        )


def thumbnail_name(clip_id: str) -> str:
    """The thumbnail file of a clip, relative to output_dir (ids may hold any characters)."""
    return f"{THUMBS}/{hashlib.sha1(clip_id.encode()).hexdigest()[:16]}.png"


def _write_thumbnail(output_dir: str, clip: dict, still) -> None:
    name = thumbnail_name(clip["id"])
    target = os.path.join(output_dir, name)
    if "://" in output_dir:
        from apache_beam.io.filesystems import FileSystems

        with tempfile.NamedTemporaryFile(suffix=".png") as tmp:
            video_io.write_image(tmp.name, still)
            with open(tmp.name, "rb") as src, FileSystems.create(target) as dst:
                dst.write(src.read())
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        video_io.write_image(target, still)
    clip["thumbnail"] = name


class SplitAndMeasure(beam.DoFn):
    """(video row) -> (clip row, still) per candidate clip; too-short clips, the video's
    summary row and failures go to their tagged outputs. Prints a progress line (this
    worker's videos out of the job's `total`)."""

    def __init__(self, cfg: CurateConfig, total: int):
        self.cfg, self.total = cfg, total

    def setup(self):
        self._progress = progress.Progress("curate", max(self.total, 1), every_secs=10.0)
        self._done = 0
        self._progress.update(0)

    def process(self, row: dict):
        key = manifest.key(row)
        try:
            kept, short, stills, short_stills, n = clipper.clips(row, key, self.cfg.clipper)
        except Exception as e:  # noqa: BLE001 (one bad video never fails the job)
            Metrics.counter(NS, "failed").inc()
            yield beam.pvalue.TaggedOutput(
                _FAILED, recaption_pipeline.dead_letter(row, "decode", e)
            )
            return
        Metrics.counter(NS, "videos").inc()
        Metrics.counter(NS, "frames").inc(n)
        Metrics.counter(NS, "clips").inc(len(kept) + len(short))
        if self.cfg.report:
            for clip, still in zip(kept + short, stills + short_stills):
                _write_thumbnail(self.cfg.output_dir, clip, still)
        for clip in short:
            yield beam.pvalue.TaggedOutput(_SHORT, clip)
        yield beam.pvalue.TaggedOutput(
            _VIDEO, dict(id=key, path=row["path"], frames=n, clips=len(kept), too_short=len(short))
        )
        for clip, still in zip(kept, stills):
            yield clip, still
        self._done += 1
        self._progress.update(self._done, f"{len(kept)} clips from {key}")


class _Loaded:
    """Weak-referenceable holder of the loaded models, for `shared.Shared`."""

    def __init__(self, models):
        self.models = models


class Score(beam.DoFn):
    """[(clip, still)] -> clip rows with the model scores; the models are loaded once per
    worker process (shared by its threads' DoFn instances) in setup(). A failing batch is
    scored item by item, so that a bad item alone goes to the dead letter (its clip id)."""

    def __init__(self, spec: scorers.ScorerSpec):
        self.spec = spec
        self._shared = shared.Shared()

    def setup(self):
        spec = self.spec
        self._loaded = self._shared.acquire(lambda: _Loaded(spec.load()), tag=repr(spec))

    def process(self, batch):
        batch = list(batch)
        Metrics.distribution(NS, "score_batch").update(len(batch))
        models = self._loaded.models
        try:
            scores = models.score([still for _, still in batch])
        except Exception:  # noqa: BLE001 (find the failing items one by one)
            scores = None
        if scores is not None:
            for (clip, _), extra in zip(batch, scores):
                yield dict(clip, **extra)
            return
        for clip, still in batch:
            try:
                (extra,) = models.score([still])
            except Exception as e:  # noqa: BLE001
                Metrics.counter(NS, "failed").inc()
                yield beam.pvalue.TaggedOutput(
                    _FAILED, recaption_pipeline.dead_letter(clip, "score", e)
                )
                continue
            yield dict(clip, **extra)


class Filter(beam.DoFn):
    """clip row -> itself, or a rejected row (tagged) with its `reasons`."""

    def __init__(self, thresholds: filters.Thresholds):
        self.thresholds = thresholds

    def process(self, clip: dict):
        reasons = filters.reasons(clip, self.thresholds)
        if reasons:
            yield beam.pvalue.TaggedOutput(REJECTED, dict(clip, reasons=reasons))
            return
        yield clip


def _count_rejected(clip: dict) -> dict:
    Metrics.counter(NS, "rejected").inc()
    for reason in clip["reasons"]:
        Metrics.counter(NS, f"rejected_{reason}").inc()
    return clip


def _bucketed(clip: dict, max_hamming: int):
    """(band bucket, clip) for each band of the clip's middle keyframe hash."""
    middle = int(clip["phash"][len(clip["phash"]) // 2], 16)
    for band in dedup.bands(middle, max_hamming):
        yield band, clip


def _bucket_losers(keyed, max_hamming: int):
    _, clips = keyed
    yield from dedup.losers(list(clips), max_hamming)


def _dedup_verdict(keyed):
    """(id, {'clip': [row], 'beaten_by': [ids]}) -> the row, or its duplicate rejection."""
    _, groups = keyed
    rows = list(groups["clip"])
    if not rows:
        return  # an earlier run's clip
    winners = sorted(set(groups["beaten_by"]))
    clip = rows[0]
    if winners:
        yield beam.pvalue.TaggedOutput(
            _DUP, dict(clip, reasons=["duplicate"], duplicate_of=winners[0])
        )
        return
    Metrics.counter(NS, "kept").inc()
    yield clip


def _glob(output_dir: str, kind: str) -> str:
    return os.path.join(output_dir, f"{kind}-*.jsonl")


def _has_match(pattern: str) -> bool:
    from apache_beam.io.filesystems import FileSystems

    return bool(FileSystems.match([pattern])[0].metadata_list)


def _is_folder(path: str) -> bool:
    return "://" not in path and os.path.isdir(path)


def input_rows(path: str) -> list[dict] | None:
    """The rows of a folder input ({path, caption?} per video, sorted); None for a manifest
    (read by the pipeline itself)."""
    if not _is_folder(path):
        return None
    rows = []
    for entry in data_manifest.scan_folder(path):
        row = dict(path=entry.path)
        if entry.caption:
            row["caption"] = entry.caption
        rows.append(row)
    return rows


def _count_lines(path: str) -> int:
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(path) as f:
        return sum(1 for line in f if line.strip())


def _read_done(p: beam.Pipeline, patterns: list[str], label: str):
    """(key, None) of every row `id` in the JSONL files matching any of `patterns`."""
    done = [
        p
        | f"Read{label}{i}" >> beam.io.ReadFromText(pattern)
        | f"{label}Key{i}" >> beam.Map(lambda line: (str(json.loads(line)["id"]), None))
        for i, pattern in enumerate(patterns)
        if _has_match(pattern)
    ]
    return done | f"{label}s" >> beam.Flatten() if done else p | f"No{label}" >> beam.Create([])


def _write(pcoll, output_dir: str, kind: str, run_id: str, label: str):
    to_json = lambda row: json.dumps(row, sort_keys=True)  # noqa: E731
    return (
        pcoll
        | f"{label}Json" >> beam.Map(to_json)
        | f"Write{label}"
        >> beam.io.WriteToText(
            os.path.join(output_dir, f"{kind}-{run_id}"), file_name_suffix=".jsonl"
        )
    )


def build(p: beam.Pipeline, cfg: CurateConfig, run_id: str) -> None:
    """Adds the curation job to pipeline `p` (outputs named with `run_id`)."""
    folder_rows = input_rows(cfg.input)
    if folder_rows is not None:
        total = len(folder_rows)
        rows = p | "Videos" >> beam.Create([(manifest.key(r), r) for r in folder_rows])
        parse_failed = p | "NoParseFailures" >> beam.Create([])
    else:
        fmt = manifest.manifest_format(cfg.input)
        header = manifest.csv_header(cfg.input) if fmt == "csv" else None
        total = _count_lines(cfg.input) - int(fmt == "csv")
        parsed = (
            p
            | "ReadManifest" >> beam.io.ReadFromText(cfg.input, skip_header_lines=int(fmt == "csv"))
            | "Parse"
            >> beam.ParDo(recaption_pipeline.ParseRow(fmt, header, cfg.input)).with_outputs(
                _FAILED, main="ok"
            )
        )
        rows, parse_failed = parsed.ok, parsed[_FAILED]
    done_globs = [_glob(cfg.output_dir, VIDEOS)]
    if not cfg.retry_failed:
        done_globs.append(_glob(cfg.output_dir, DEAD_LETTER))
    done = _read_done(p, done_globs, "Done")
    split = (
        {"row": rows, "done": done}
        | "JoinDone" >> beam.CoGroupByKey()
        | "Pending" >> beam.FlatMap(recaption_pipeline.pending, namespace=NS)
        | "SplitAndMeasure"
        >> beam.ParDo(SplitAndMeasure(cfg, total)).with_outputs(_FAILED, _SHORT, _VIDEO, main="ok")
    )
    candidates = split.ok
    failures = [parse_failed, split[_FAILED]]
    if cfg.scorers.active:
        size = cfg.scorers.batch_size
        scored = (
            candidates
            | "Batch" >> beam.BatchElements(min_batch_size=size, max_batch_size=size)
            | "Score" >> beam.ParDo(Score(cfg.scorers)).with_outputs(_FAILED, main="ok")
        )
        candidates = scored.ok
        failures.append(scored[_FAILED])
    else:
        candidates = candidates | "DropStills" >> beam.Map(lambda clip_still: clip_still[0])
    filtered = candidates | "Filter" >> beam.ParDo(Filter(cfg.thresholds)).with_outputs(
        REJECTED, main="ok"
    )
    rejected = [split[_SHORT], filtered[REJECTED]]
    if cfg.dedup:
        anchors = []
        if _has_match(_glob(cfg.output_dir, CLIPS)):
            anchors = [
                p
                | "ReadKept" >> beam.io.ReadFromText(_glob(cfg.output_dir, CLIPS))
                | "Anchors" >> beam.Map(lambda line: dict(json.loads(line), anchor=True))
            ]
        h = cfg.max_hamming
        beaten = (
            [filtered.ok, *anchors]
            | "WithAnchors" >> beam.Flatten()
            | "Buckets" >> beam.FlatMap(_bucketed, h)
            | "GroupBuckets" >> beam.GroupByKey()
            | "Losers" >> beam.FlatMap(_bucket_losers, h)
        )
        verdict = (
            {"clip": filtered.ok | "ById" >> beam.Map(lambda c: (c["id"], c)), "beaten_by": beaten}
            | "JoinLosers" >> beam.CoGroupByKey()
            | "Verdict" >> beam.FlatMap(_dedup_verdict).with_outputs(_DUP, main="ok")
        )
        kept = verdict.ok
        rejected.append(verdict[_DUP])
    else:
        kept = filtered.ok | "CountKept" >> beam.Map(
            lambda c: (Metrics.counter(NS, "kept").inc(), c)[1]
        )
    _write(kept, cfg.output_dir, CLIPS, run_id, "Clips")
    _write(
        rejected | "AllRejected" >> beam.Flatten() | "CountRejected" >> beam.Map(_count_rejected),
        cfg.output_dir,
        REJECTED,
        run_id,
        "Rejected",
    )
    _write(split[_VIDEO], cfg.output_dir, VIDEOS, run_id, "Videos")
    _write(
        failures | "Failures" >> beam.Flatten(),
        cfg.output_dir,
        DEAD_LETTER,
        run_id,
        "DeadLetter",
    )


def merge(output_dir: str) -> tuple[int, int]:
    """Writes manifest.jsonl (kept clips) and rejected.jsonl from every run's shards, sorted by
    id (the latest run's row for an id); returns their row counts."""
    counts = []
    for kind, name in ((CLIPS, MERGED), (REJECTED, MERGED_REJECTED)):
        rows = {}
        for row in manifest.read_jsonl(_glob(output_dir, kind)):
            rows[row["id"]] = row  # shards of later runs sort later: their rows win
        manifest.write_jsonl(os.path.join(output_dir, name), [rows[k] for k in sorted(rows)])
        counts.append(len(rows))
    return counts[0], counts[1]


def _counter(result, name: str) -> int:
    found = result.metrics().query(MetricsFilter().with_namespace(NS).with_name(name))
    return int(sum(c.committed or 0 for c in found["counters"]))


def run(cfg: CurateConfig, options: PipelineOptions | None = None) -> dict:
    """Runs the job (DirectRunner unless `options` say otherwise), waits for it, merges the
    shards and (with cfg.report) writes report.html; returns the Beam counters (videos, frames,
    clips, kept, rejected, rejected_<reason>, failed, skipped), the largest model batch and
    the merged row counts."""
    now = time.time()  # run ids sort in time order: later shards win in `merge`
    run_id = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f"{int(now * 1e6) % 10**6:06d}"
    p = beam.Pipeline(options=options or PipelineOptions([]))
    build(p, cfg, run_id)
    result = p.run()
    result.wait_until_finish()
    counts = {name: _counter(result, name) for name in COUNTERS}
    for reason in filters.REASONS:
        counts[f"rejected_{reason}"] = _counter(result, f"rejected_{reason}")
    found = result.metrics().query(MetricsFilter().with_namespace(NS).with_name("score_batch"))
    sizes = [d.committed.max for d in found["distributions"] if d.committed and d.committed.count]
    counts["max_score_batch"] = max(sizes, default=0)
    counts["manifest_rows"], counts["rejected_rows"] = merge(cfg.output_dir)
    if cfg.report:
        counts["report"] = report.write(cfg.output_dir, cfg.thresholds, cfg.report_thumbnails)
    counts["run_id"] = run_id
    return counts
