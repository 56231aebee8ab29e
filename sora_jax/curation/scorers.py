"""Optional model scores of a clip's middle still, batched, each loaded once per worker.

`aesthetic`: a linear head on the unit-norm image embedding of a CLIP vision tower (the
LAION aesthetic-predictor recipe). The model is a local transformers folder holding a
`CLIPVisionModelWithProjection` (or a full CLIP) checkpoint and its image processor, with
`aesthetic_head.npz` beside it: `w` f32[d] and `b` f32[] (d = the projection size). It needs
the `transformers` package and a PyTorch build; nothing is downloaded.

`text_area`: the fraction of the still covered by the union of the text boxes a local
transformers object detector finds (`AutoModelForObjectDetection` + its image processor, e.g. a
DETR / YOLOS / Conditional-DETR checkpoint fine-tuned for scene text or captions): boxes whose
label name matches `text_labels` (a regex) with a score >= `text_threshold`, as the processor's
`post_process_object_detection` gives them at the still's size.

Without a model path a score is skipped: its field is absent and its filter never rejects.
"""

from __future__ import annotations

import dataclasses
import os
import re

import numpy as np

HEAD = "aesthetic_head.npz"


@dataclasses.dataclass(frozen=True)
class ScorerSpec:
    """The `models` section of configs/curate.py."""

    aesthetic_model: str = ""
    text_model: str = ""
    batch_size: int = 16
    text_labels: str = "text"
    text_threshold: float = 0.5

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"models.batch_size must be >= 1, got {self.batch_size}")
        if not 0.0 <= self.text_threshold <= 1.0:
            raise ValueError(f"models.text_threshold must be in [0, 1], got {self.text_threshold}")
        try:
            re.compile(self.text_labels)
        except re.error as e:
            raise ValueError(
                f"models.text_labels={self.text_labels!r}: not a regex ({e})"
            ) from None
        if self.text_model and not os.path.isdir(self.text_model):
            raise ValueError(f"models.text_model: no model folder {self.text_model}")
        if self.aesthetic_model:
            if not os.path.isdir(self.aesthetic_model):
                raise ValueError(f"models.aesthetic_model: no model folder {self.aesthetic_model}")
            if not os.path.isfile(os.path.join(self.aesthetic_model, HEAD)):
                raise ValueError(
                    f"models.aesthetic_model: {self.aesthetic_model} has no {HEAD} (w f32[d], "
                    f"b f32[]: the linear head on the CLIP image embedding)"
                )

    @property
    def active(self) -> bool:
        return bool(self.aesthetic_model or self.text_model)

    @classmethod
    def from_config(cls, section) -> "ScorerSpec":
        return cls(
            section.aesthetic_model,
            section.text_model,
            section.batch_size,
            section.text_labels,
            section.text_threshold,
        )

    def load(self) -> "Scorers":
        return Scorers(
            AestheticScorer(self.aesthetic_model) if self.aesthetic_model else None,
            (
                TextAreaScorer(self.text_model, self.text_labels, self.text_threshold)
                if self.text_model
                else None
            ),
        )


class AestheticScorer:
    """CLIP vision tower + linear head from a local folder; `score(stills) -> f32[n]`."""

    def __init__(self, path: str):
        import torch
        import transformers

        self._torch = torch
        self.processor = transformers.AutoImageProcessor.from_pretrained(path)
        self.model = transformers.CLIPVisionModelWithProjection.from_pretrained(path).eval()
        head = np.load(os.path.join(path, HEAD))
        self.w = np.asarray(head["w"], np.float32).reshape(-1)
        self.b = float(np.asarray(head["b"]).reshape(()))
        dim = self.model.config.projection_dim
        if self.w.shape != (dim,):
            raise ValueError(f"{path}/{HEAD}: w has shape {self.w.shape}, the embedding ({dim},)")

    def score(self, stills: list[np.ndarray]) -> np.ndarray:
        """f32[n] scores of uint8[h w 3] stills."""
        inputs = self.processor(images=list(stills), return_tensors="pt")
        with self._torch.no_grad():
            emb = self.model(**inputs).image_embeds.float().numpy()
        emb = emb / np.maximum(np.linalg.norm(emb, axis=-1, keepdims=True), 1e-12)
        return emb @ self.w + self.b


def box_union_fraction(boxes: np.ndarray, height: int, width: int) -> float:
    """The fraction of a height x width image inside the union of `boxes` f32[n 4] (x0 y0 x1
    y1, pixels; clipped to the image), counted on the pixel grid (a pixel is in when its centre
    is)."""
    covered = np.zeros((height, width), bool)
    for x0, y0, x1, y1 in np.asarray(boxes, np.float64).reshape(-1, 4):
        c0, c1 = (int(np.clip(np.round(v), 0, width)) for v in (x0, x1))
        r0, r1 = (int(np.clip(np.round(v), 0, height)) for v in (y0, y1))
        covered[r0:r1, c0:c1] = True
    return float(covered.mean())


class TextAreaScorer:
    """A local transformers object detector; `score(stills) -> f32[n]` text-covered fractions."""

    def __init__(self, path: str, labels: str = "text", threshold: float = 0.5):
        import torch
        import transformers

        self._torch = torch
        self.processor = transformers.AutoImageProcessor.from_pretrained(path)
        self.model = transformers.AutoModelForObjectDetection.from_pretrained(path).eval()
        self.threshold = threshold
        names = self.model.config.id2label
        self.label_ids = {int(i) for i, name in names.items() if re.fullmatch(labels, name)}
        if not self.label_ids:
            raise ValueError(
                f"models.text_labels={labels!r} matches none of {path}'s labels "
                f"{sorted(names.values())}"
            )

    def boxes(self, stills: list[np.ndarray]) -> list[np.ndarray]:
        """Per still, f32[k 4] text boxes (x0 y0 x1 y1 in the still's pixels)."""
        inputs = self.processor(images=list(stills), return_tensors="pt")
        with self._torch.no_grad():
            outputs = self.model(**inputs)
        found = self.processor.post_process_object_detection(
            outputs, threshold=self.threshold, target_sizes=[s.shape[:2] for s in stills]
        )
        out = []
        for f in found:
            keep = np.isin(f["labels"].numpy(), list(self.label_ids))
            out.append(f["boxes"].numpy()[keep].astype(np.float32))
        return out

    def score(self, stills: list[np.ndarray]) -> np.ndarray:
        return np.asarray(
            [box_union_fraction(b, *s.shape[:2]) for s, b in zip(stills, self.boxes(stills))],
            np.float32,
        )


@dataclasses.dataclass
class Scorers:
    aesthetic: AestheticScorer | None = None
    text: TextAreaScorer | None = None

    def score(self, stills: list[np.ndarray]) -> list[dict]:
        """Per still, {score name: float} of every loaded model."""
        out = [{} for _ in stills]
        for name, model in (("aesthetic", self.aesthetic), ("text_area", self.text)):
            if model is not None and stills:
                for row, s in zip(out, model.score(stills)):
                    row[name] = float(s)
        return out
