"""Which captioner a recaption job runs: a small picklable spec, loaded on each worker."""

from __future__ import annotations

import dataclasses

from sora_jax.captioning import hf_captioner, shapes_captioner

KINDS = ("builtin", "hf")


@dataclasses.dataclass(frozen=True)
class CaptionerSpec:
    """kind 'builtin': the moving-shapes captioner (`style` 'grammar' | 'detailed');
    kind 'hf': a transformers model from the local folder `path` (`prompt`, `max_new_tokens`).

    `num_frames` is how many frames the pipeline samples per video (evenly spaced; 0 = all):
    the built-in captioner measures motion, so it defaults to all; a transformers model sees
    the middle one, so it defaults to 1."""

    kind: str = "builtin"
    path: str = ""
    style: str = "grammar"
    prompt: str | None = None
    max_new_tokens: int = 60
    num_frames: int | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown captioner kind {self.kind!r}; expected one of {KINDS}")
        if self.kind == "hf" and not self.path:
            raise ValueError("captioner kind 'hf' needs the path of a local model folder")
        if self.num_frames is not None and self.num_frames < 0:
            raise ValueError(f"num_frames must be >= 0 (0 = all), got {self.num_frames}")

    @property
    def frames(self) -> int:
        if self.num_frames is not None:
            return self.num_frames
        return 0 if self.kind == "builtin" else 1

    @property
    def name(self) -> str:
        return f"builtin-shapes-{self.style}" if self.kind == "builtin" else f"hf:{self.path}"

    def load(self):
        """The captioner: an object with `caption(videos: list[uint8[t h w 3]]) -> list[str]`."""
        if self.kind == "builtin":
            return shapes_captioner.ShapesCaptioner(self.style)
        return hf_captioner.HFCaptioner(self.path, self.prompt, self.max_new_tokens)
