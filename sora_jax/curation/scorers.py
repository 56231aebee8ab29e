"""Optional model scores of a clip's middle still, batched, each loaded once per worker.

`aesthetic`: a linear head on the unit-norm image embedding of a CLIP vision tower (the
LAION aesthetic-predictor recipe). The model is a local transformers folder holding a
`CLIPVisionModelWithProjection` (or a full CLIP) checkpoint and its image processor, with
`aesthetic_head.npz` beside it: `w` f32[d] and `b` f32[] (d = the projection size). It needs
the `transformers` package and a PyTorch build; nothing is downloaded.

`text_area` (the fraction of a frame covered by text) needs a text detector, which sora_jax does
not ship: giving `models.text_model` stops the job at start with a message saying so. Without
a model path a score is skipped: its field is absent and its filter never rejects.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

HEAD = "aesthetic_head.npz"


@dataclasses.dataclass(frozen=True)
class ScorerSpec:
    """The `models` section of configs/curate.py."""

    aesthetic_model: str = ""
    text_model: str = ""
    batch_size: int = 16

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"models.batch_size must be >= 1, got {self.batch_size}")
        if self.text_model:
            raise ValueError(
                "models.text_model: text-area scoring needs a text detector, and none is "
                "supported yet; leave it empty to skip the text-area score"
            )
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
        return bool(self.aesthetic_model)

    @classmethod
    def from_config(cls, section) -> "ScorerSpec":
        return cls(section.aesthetic_model, section.text_model, section.batch_size)

    def load(self) -> "Scorers":
        return Scorers(AestheticScorer(self.aesthetic_model) if self.aesthetic_model else None)


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


@dataclasses.dataclass
class Scorers:
    aesthetic: AestheticScorer | None = None

    def score(self, stills: list[np.ndarray]) -> list[dict]:
        """Per still, {score name: float} of every loaded model."""
        out = [{} for _ in stills]
        if self.aesthetic is not None and stills:
            for row, s in zip(out, self.aesthetic.score(stills)):
                row["aesthetic"] = float(s)
        return out
