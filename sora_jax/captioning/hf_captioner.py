"""Captioner from a local Hugging Face image(-text)-to-text model folder (PyTorch, transformers).

Any model `AutoModelForImageTextToText` loads (BLIP, BLIP-2, GIT, LLaVA-style, Florence-2,
VisionEncoderDecoder, ...), with its processor, or its image processor and tokenizer when the
folder has no combined processor. Nothing is downloaded: loading reads `path` only
(`local_files_only=True`). transformers and torch are optional dependencies (the `pipeline`
extra installs transformers; torch is the user's choice of build).

A video is captioned from its middle frame (the frames the pipeline sampled); videos in a batch
go through the model together, and greedy decoding (the default) makes each caption independent
of its batch mates.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sora_jax.data import video_io


class HFCaptioner:
    """Captions videos with a transformers model loaded once from the local folder `path`.

    `prompt` is the text given to prompted models (LLaVA-style chat models get it through the
    processor's chat template with the image); None for unprompted ones (BLIP, GIT,
    VisionEncoderDecoder). `caption(videos)` takes uint8[t h w 3] videos and returns one
    stripped caption per video, in order.
    """

    def __init__(
        self,
        path: str,
        prompt: str | None = None,
        max_new_tokens: int = 60,
        num_beams: int = 1,
        dtype: str = "float32",
    ):
        try:
            import torch
            import transformers
        except ImportError as e:
            raise ImportError(
                "the transformers captioner needs `pip install transformers torch`"
            ) from e
        self._torch = torch
        kw = dict(local_files_only=True)
        self.model = transformers.AutoModelForImageTextToText.from_pretrained(
            path, dtype=getattr(torch, dtype), **kw
        ).eval()
        processor = transformers.AutoProcessor.from_pretrained(path, **kw)
        if isinstance(processor, transformers.ProcessorMixin):  # images and text together
            self.processor, self.tokenizer = processor, processor.tokenizer
        else:  # separate image processor and tokenizer (e.g. VisionEncoderDecoder)
            self.processor = transformers.AutoImageProcessor.from_pretrained(path, **kw)
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(path, **kw)
        self.prompt = prompt
        self.max_new_tokens = int(max_new_tokens)
        self.num_beams = int(num_beams)
        self.name = f"hf:{path}"

    def _inputs(self, images: list[np.ndarray]) -> dict:
        if self.prompt is None:
            return self.processor(images=images, return_tensors="pt")
        text = self.prompt
        template = getattr(self.processor, "chat_template", None)
        if template:
            messages = [
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}
            ]
            text = self.processor.apply_chat_template(messages, add_generation_prompt=True)
        return self.processor(
            images=images, text=[text] * len(images), padding=True, return_tensors="pt"
        )

    def caption(self, videos: Sequence[np.ndarray]) -> list[str]:
        if not videos:
            return []
        images = [video_io.check_video(v)[len(v) // 2] for v in videos]
        inputs = self._inputs(images)
        with self._torch.no_grad():
            out = self.model.generate(
                **inputs,
                max_new_tokens=self.max_new_tokens,
                num_beams=self.num_beams,
                do_sample=False,
            )
        if "input_ids" in inputs and not self.model.config.is_encoder_decoder:
            out = out[:, inputs["input_ids"].shape[1] :]  # decoder-only: drop the prompt
        return [t.strip() for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)]
