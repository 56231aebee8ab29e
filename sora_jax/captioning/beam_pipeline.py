"""The recaptioning pipeline on Apache Beam (any runner: DirectRunner locally, Dataflow, Flink,
Spark through standard pipeline options).

  manifest lines -> rows -> skip rows already done (join with earlier outputs by key)
    -> DecodeFrames (PyAV, per row)      --failed--> dead letter
  (or TFDS example indices -> keys -> skip those done -> DecodeTfdsRecord: read the record,
   decode its clip window; see captioning/tfds_input.py)
    -> BatchElements(batch_size)
    -> CaptionBatch (captioner loaded once per worker process; a failing batch is retried
       item by item so one bad item fails alone)  --failed--> dead letter
    -> captions-<run>-*.jsonl  (the row's fields + `id`, `dense_caption`, `captioner`)

Outputs go to `output_dir`; each run writes its own shards, so a re-run (or a resumed run after
a crash) reads the earlier shards first and processes only the rows not yet in them; rows in an
earlier dead letter are skipped too unless `retry_failed`. `merge` then writes
`output_dir/manifest.jsonl`: every captioned row, sorted by key.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import traceback

import apache_beam as beam
from apache_beam.metrics.metric import Metrics, MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.utils import shared

from sora_jax.captioning import manifest, tfds_input
from sora_jax.captioning.captioner_spec import CaptionerSpec

CAPTIONS = "captions"
DEAD_LETTER = "dead_letter"
MERGED = "manifest.jsonl"
_NS = "recaption"
_FAILED = "failed"


def dead_letter(row: dict, stage: str, error: BaseException) -> dict:
    """The dead-letter record of `row` failing at `stage` (called inside the except block)."""
    return dict(
        id=manifest.key(row),
        path=row.get("path"),
        stage=stage,
        error=f"{type(error).__name__}: {error}",
        traceback=traceback.format_exc(limit=3),
    )


class ParseRow(beam.DoFn):
    """Manifest line -> (key, row with `path` resolved); malformed lines -> dead letter."""

    def __init__(self, fmt: str, header: list[str] | None, manifest_path: str):
        self.fmt, self.header, self.manifest_path = fmt, header, manifest_path

    def process(self, line: str):
        if not line.strip():
            return
        try:
            row = manifest.parse_line(line, self.fmt, self.header)
        except Exception as e:  # noqa: BLE001 (any malformed line goes to the dead letter)
            Metrics.counter(_NS, "failed").inc()
            yield beam.pvalue.TaggedOutput(_FAILED, dead_letter({"path": line}, "parse", e))
            return
        row["path"] = manifest.resolve(row["path"], self.manifest_path)
        yield manifest.key(row), row


def pending(keyed, namespace: str = _NS):
    """(key, {'row': [rows], 'done': [...]}) -> the first row when the key is not done (the
    skipped ones counted in `namespace`'s 'skipped')."""
    key, groups = keyed
    rows = list(groups["row"])
    if not rows:
        return
    if list(groups["done"]):
        Metrics.counter(namespace, "skipped").inc(len(rows))
        return
    yield rows[0]


def _decoded(row: dict, read):
    """Yields read()'s (row, frames), or `row`'s dead letter when reading fails."""
    try:
        out = read()
    except Exception as e:  # noqa: BLE001
        Metrics.counter(_NS, "failed").inc()
        yield beam.pvalue.TaggedOutput(_FAILED, dead_letter(row, "decode", e))
        return
    Metrics.counter(_NS, "decoded").inc()
    yield out


class DecodeFrames(beam.DoFn):
    """row -> (row, uint8[k h w 3] frames) sampled with PyAV (inside the row's clip window
    `start` / `end` when it has one, e.g. a curated clip); failures -> dead letter."""

    def __init__(self, num_frames: int):
        self.num_frames = num_frames

    def process(self, row: dict):
        def read():
            window = manifest.row_window(row, row["path"])
            return row, manifest.read_frames(row["path"], self.num_frames, window)

        yield from _decoded(row, read)


class DecodeTfdsRecord(beam.DoFn):
    """{'id', 'tfds_index'} -> (row of the record's fields, uint8[k h w 3] frames of its clip
    window); the dataset is opened once per DoFn instance. Failures -> dead letter."""

    def __init__(self, source: tfds_input.TfdsInput, num_frames: int):
        self.source, self.num_frames = source, num_frames

    def setup(self):
        self._records = self.source.open()

    def process(self, row: dict):
        def read():
            record = self._records[row["tfds_index"]]
            return (
                tfds_input.record_row(record, row["id"], row["tfds_index"]),
                tfds_input.read_frames(record, self.num_frames),
            )

        yield from _decoded(row, read)


class _Loaded:
    """Weak-referenceable holder of a captioner, for `shared.Shared`."""

    def __init__(self, captioner):
        self.captioner = captioner


class CaptionBatch(beam.DoFn):
    """[(row, frames)] -> output rows; the captioner is loaded once per worker process (shared
    by the DoFn instances of its threads) in setup()."""

    def __init__(self, spec: CaptionerSpec):
        self.spec = spec
        self._shared = shared.Shared()

    def setup(self):
        spec = self.spec
        self._captioner = self._shared.acquire(lambda: _Loaded(spec.load()), tag=repr(spec))

    def _row(self, row: dict, text: str) -> dict:
        Metrics.counter(_NS, "captioned").inc()
        return dict(row, id=manifest.key(row), dense_caption=text, captioner=self.spec.name)

    def process(self, batch):
        batch = list(batch)
        Metrics.distribution(_NS, "batch_size").update(len(batch))
        captioner = self._captioner.captioner
        try:
            texts = captioner.caption([frames for _, frames in batch])
            if len(texts) != len(batch):
                raise RuntimeError(f"captioner returned {len(texts)} captions for {len(batch)}")
        except Exception:  # noqa: BLE001 (find the failing items one by one)
            texts = None
        if texts is not None:
            for (row, _), text in zip(batch, texts):
                yield self._row(row, text)
            return
        for row, frames in batch:
            try:
                text = captioner.caption([frames])[0]
            except Exception as e:  # noqa: BLE001
                Metrics.counter(_NS, "failed").inc()
                yield beam.pvalue.TaggedOutput(_FAILED, dead_letter(row, "caption", e))
                continue
            yield self._row(row, text)


@dataclasses.dataclass(frozen=True)
class RecaptionConfig:
    """A recaption job: its input (an `input` manifest (.jsonl / .csv) or a `tfds` dataset
    split, exactly one), `output_dir`, the captioner, the batch size of the captioner's calls,
    and whether rows in an earlier dead letter are retried."""

    input: str
    output_dir: str
    captioner: CaptionerSpec = CaptionerSpec()
    batch_size: int = 8
    retry_failed: bool = False
    tfds: tfds_input.TfdsInput | None = None

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if bool(self.input) == (self.tfds is not None):
            raise ValueError("give exactly one input: a manifest or a TFDS dataset")


def _glob(output_dir: str, kind: str) -> str:
    return os.path.join(output_dir, f"{kind}-*.jsonl")


def _has_match(pattern: str) -> bool:
    from apache_beam.io.filesystems import FileSystems

    return bool(FileSystems.match([pattern])[0].metadata_list)


def _read_manifest(p: beam.Pipeline, path: str):
    """(key, row) of every manifest line (`ok`) and dead letters of malformed ones."""
    fmt = manifest.manifest_format(path)
    header = manifest.csv_header(path) if fmt == "csv" else None
    return (
        p
        | "ReadManifest" >> beam.io.ReadFromText(path, skip_header_lines=int(fmt == "csv"))
        | "Parse" >> beam.ParDo(ParseRow(fmt, header, path)).with_outputs(_FAILED, main="ok")
    )


def _tfds_keys(p: beam.Pipeline, source: tfds_input.TfdsInput, shard: int = 1000):
    """(key, {'id', 'tfds_index'}) of every example of the split, from index ranges (records
    are read only for the examples still to do)."""
    n = len(source.open())

    def keyed(bounds):
        for i in range(*bounds):
            yield source.key(i), dict(id=source.key(i), tfds_index=i)

    return (
        p
        | "IndexRanges" >> beam.Create([(s, min(s + shard, n)) for s in range(0, n, shard)])
        | "Keys" >> beam.FlatMap(keyed)
    )


def build(p: beam.Pipeline, cfg: RecaptionConfig, run_id: str) -> None:
    """Adds the recaption job to pipeline `p` (outputs named with `run_id`)."""
    if cfg.tfds is None:
        parsed = _read_manifest(p, cfg.input)
        rows, parse_failed = parsed.ok, parsed[_FAILED]
        decode = DecodeFrames(cfg.captioner.frames)
    else:
        rows, parse_failed = _tfds_keys(p, cfg.tfds), p | "NoParseFailures" >> beam.Create([])
        decode = DecodeTfdsRecord(cfg.tfds, cfg.captioner.frames)
    done_globs = [_glob(cfg.output_dir, CAPTIONS)]
    if not cfg.retry_failed:
        done_globs.append(_glob(cfg.output_dir, DEAD_LETTER))
    done = [
        p
        | f"ReadDone{i}" >> beam.io.ReadFromText(pattern)
        | f"DoneKey{i}" >> beam.Map(lambda line: (str(json.loads(line)["id"]), None))
        for i, pattern in enumerate(done_globs)
        if _has_match(pattern)
    ]
    done = done | "Done" >> beam.Flatten() if done else p | "NoneDone" >> beam.Create([])
    decoded = (
        {"row": rows, "done": done}
        | "JoinDone" >> beam.CoGroupByKey()
        | "Pending" >> beam.FlatMap(pending)
        | "Decode" >> beam.ParDo(decode).with_outputs(_FAILED, main="ok")
    )
    captioned = (
        decoded.ok
        | "Batch"
        >> beam.BatchElements(min_batch_size=cfg.batch_size, max_batch_size=cfg.batch_size)
        | "Caption" >> beam.ParDo(CaptionBatch(cfg.captioner)).with_outputs(_FAILED, main="ok")
    )
    to_json = lambda row: json.dumps(row, sort_keys=True)  # noqa: E731
    (
        captioned.ok
        | "CaptionJson" >> beam.Map(to_json)
        | "WriteCaptions"
        >> beam.io.WriteToText(
            os.path.join(cfg.output_dir, f"{CAPTIONS}-{run_id}"), file_name_suffix=".jsonl"
        )
    )
    (
        (parse_failed, decoded[_FAILED], captioned[_FAILED])
        | "Failures" >> beam.Flatten()
        | "FailureJson" >> beam.Map(to_json)
        | "WriteDeadLetter"
        >> beam.io.WriteToText(
            os.path.join(cfg.output_dir, f"{DEAD_LETTER}-{run_id}"), file_name_suffix=".jsonl"
        )
    )


def merge(output_dir: str) -> int:
    """Writes output_dir/manifest.jsonl from every captions shard (sorted by key, the latest
    run's row for a key); returns its row count."""
    rows = {}
    for row in manifest.read_jsonl(_glob(output_dir, CAPTIONS)):
        rows[row["id"]] = row  # shards of later runs sort later: their rows win
    ordered = [rows[k] for k in sorted(rows)]
    manifest.write_jsonl(os.path.join(output_dir, MERGED), ordered)
    return len(ordered)


def run(cfg: RecaptionConfig, options: PipelineOptions | None = None, do_merge=True) -> dict:
    """Runs the job (DirectRunner unless `options` say otherwise) and waits for it; returns the
    counters (captioned, failed, skipped, decoded), the largest captioner batch and the merged manifest's row count."""
    now = time.time()  # run ids sort in time order: later shards win in `merge`
    run_id = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f"{int(now * 1e6) % 10**6:06d}"
    options = options or PipelineOptions([])
    p = beam.Pipeline(options=options)
    build(p, cfg, run_id)
    result = p.run()
    result.wait_until_finish()
    counts = {}
    for name in ("captioned", "failed", "skipped", "decoded"):
        found = result.metrics().query(MetricsFilter().with_namespace(_NS).with_name(name))
        counts[name] = int(sum(c.committed or 0 for c in found["counters"]))
    found = result.metrics().query(MetricsFilter().with_namespace(_NS).with_name("batch_size"))
    sizes = [d.committed.max for d in found["distributions"] if d.committed and d.committed.count]
    counts["max_batch_size"] = max(sizes, default=0)
    if do_merge:
        counts["manifest_rows"] = merge(cfg.output_dir)
    counts["run_id"] = run_id
    return counts
