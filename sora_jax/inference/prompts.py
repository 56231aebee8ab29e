"""Prompt expansion: a user's short prompt -> a prompt in the style of the training captions.

Two expanders, both deterministic by seed (the same prompt and seed give the same expansion):

  GrammarExpander   no model: reads the attributes a prompt names in the moving-shapes grammar
                    as people phrase them (sora_jax.inference.prompt_reading: 'a crimson ball
                    drifts up and to the right' -> red, circle, up-right, slowly) and fills
                    the unnamed ones (size, speed, background and texture, and colour / shape
                    / direction too) with values sampled uniformly from the grammar, then
                    writes the grammar's caption (a caption of the grammar expands to itself);
  LMExpander        a local instruction-tuned causal LM (transformers, PyTorch) prompted with its
                    chat template, a system prompt that describes the caption style and shows
                    example captions, and the user's prompt; sampled with the seed.

Every expansion is an `Expansion` record (the prompt, the expanded prompt, how, what was
given and what was filled in), which the sampling CLI writes beside each sample.
"""

from __future__ import annotations

import dataclasses
import functools
import zlib

import numpy as np
from absl import logging

from sora_jax.data import shapes
from sora_jax.inference.prompt_reading import read_attributes, unknown_words

__all__ = ["Expansion", "GrammarExpander", "LMExpander", "read_attributes", "load_expander"]

_CATEGORIES = {
    "shape": shapes.SHAPES,
    "colour": tuple(shapes.COLOURS),
    "size": tuple(shapes.SIZES),
    "direction": tuple(shapes.DIRECTIONS),
    "speed": tuple(shapes.SPEEDS),
    "background": tuple(shapes.BACKGROUNDS),
}


@dataclasses.dataclass(frozen=True)
class Expansion:
    """One expanded prompt: `given` holds the attributes the prompt named, `sampled` those
    filled in (GrammarExpander), `ignored` the words it did not use and `unknown` those of
    them that are not common function or motion words (worth telling the user about); `note`
    says why a prompt was kept as written."""

    prompt: str
    expanded: str
    method: str
    seed: int
    given: dict = dataclasses.field(default_factory=dict)
    sampled: dict = dataclasses.field(default_factory=dict)
    ignored: tuple = ()
    unknown: tuple = ()
    note: str = ""

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def _rng(prompt: str, seed: int) -> np.random.Generator:
    """Generator of (seed, prompt): the same prompt and seed always draw the same values."""
    return np.random.default_rng([int(seed), zlib.crc32(prompt.encode("utf-8"))])


class GrammarExpander:
    """Fills what a prompt leaves out of the moving-shapes grammar with sampled values."""

    name = "grammar"

    def expand(self, prompt: str, seed: int = 0, num_frames: int = 17) -> Expansion:
        """A grammar caption keeping every attribute `prompt` names; `num_frames` == 1 gives an
        image caption (no motion clause). ValueError for a prompt with no word of the grammar."""
        given, ignored = read_attributes(prompt)
        if not given:
            raise ValueError(
                f"prompt {prompt!r} names nothing of the moving-shapes grammar (shapes "
                f"{shapes.SHAPES}, colours {tuple(shapes.COLOURS)}, ...); the built-in expander "
                "only knows that grammar: give a language model (--prompt_lm) for other prompts, "
                "or sample it as written (--expand_prompt=false)"
            )
        rng = _rng(prompt, seed)
        attrs, sampled = dict(given), {}
        fill = ["shape", "colour", "size", "background"]
        if num_frames > 1:
            fill += ["direction", "speed"]
        else:
            attrs.pop("direction", None)  # images have no motion clause
            attrs.pop("speed", None)
        for name in fill:
            if name not in attrs:
                options = _CATEGORIES[name]
                attrs[name] = sampled[name] = options[int(rng.integers(len(options)))]
        if "texture" not in attrs:
            # A named background without a texture is a plain one; else any texture.
            texture = "plain" if "background" in given else shapes.TEXTURES[int(rng.integers(4))]
            attrs["texture"] = texture
            if "background" not in given:
                sampled["texture"] = texture
        return Expansion(
            prompt=prompt,
            expanded=shapes.caption(attrs),
            method=self.name,
            seed=int(seed),
            given=given,
            sampled=sampled,
            ignored=ignored,
            unknown=unknown_words(ignored),
        )


def first_frame_prompt(prompt: str) -> str:
    """The caption of a moving-shapes video prompt's first frame: the same caption without
    its motion clause ('a red circle moves left slowly on a grey background' -> 'a red circle
    on a grey background'), the form the training images are captioned in. A prompt outside
    the grammar is returned unchanged."""
    try:
        attrs = shapes.parse_caption(prompt)
    except ValueError:
        return prompt
    return shapes.caption(dict(attrs, direction=None, speed=None))


SYSTEM_PROMPT = (
    "You rewrite short video prompts into the detailed captions a text-to-video model was "
    "trained on. A caption names the shape's size, colour and shape, how it moves (direction "
    "and speed) and the background, in one line and in this style:\n{examples}\n"
    "Keep everything the user asked for, fill in what they left out, and answer with the "
    "caption only."
)


def example_captions(num: int = 4, seed: int = 0) -> list[str]:
    """Captions of the training grammar (the style the system prompt shows)."""
    ds = shapes.MovingShapes(seed, num, frame_choices=(17,), image_fraction=0.0)
    return [ds[i]["caption"] for i in range(num)]


class LMExpander:
    """Expands prompts with a local instruction-tuned causal LM (transformers; PyTorch).

    Loads `path` once (`local_files_only`; nothing is downloaded). Its tokenizer must have a
    chat template. Sampling (temperature > 0) is seeded per call, so the same prompt and seed
    give the same expansion; temperature 0 decodes greedily.
    """

    def __init__(
        self,
        path: str,
        system_prompt: str | None = None,
        max_new_tokens: int = 60,
        temperature: float = 0.7,
        top_p: float = 0.9,
    ):
        try:
            import torch
            import transformers
        except ImportError as e:
            raise ImportError(
                "the LM prompt expander needs `pip install transformers torch`"
            ) from e
        self._torch, self._transformers = torch, transformers
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(f"the tokenizer in {path} has no chat template")
        self.model = transformers.AutoModelForCausalLM.from_pretrained(
            path, local_files_only=True
        ).eval()
        examples = "\n".join(f"- {c}" for c in example_captions())
        self.system_prompt = system_prompt or SYSTEM_PROMPT.format(examples=examples)
        self.max_new_tokens, self.temperature, self.top_p = max_new_tokens, temperature, top_p
        self.name = f"lm:{path}"

    def chat(self, prompt: str) -> str:
        """The model's input text: its chat template over the system prompt and `prompt`."""
        messages = [
            {"role": "system", "content": self.system_prompt},
            {"role": "user", "content": prompt},
        ]
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )

    def expand(self, prompt: str, seed: int = 0, num_frames: int = 17) -> Expansion:
        del num_frames  # the system prompt asks for video captions
        inputs = self.tokenizer(self.chat(prompt), return_tensors="pt", add_special_tokens=False)
        self._transformers.set_seed(int(seed))
        sample = self.temperature > 0
        with self._torch.no_grad():
            out = self.model.generate(
                **inputs,
                max_new_tokens=self.max_new_tokens,
                do_sample=sample,
                temperature=self.temperature if sample else None,
                top_p=self.top_p if sample else None,
                pad_token_id=(
                    self.tokenizer.pad_token_id
                    if self.tokenizer.pad_token_id is not None
                    else self.tokenizer.eos_token_id
                ),
            )
        new = out[0, inputs["input_ids"].shape[1] :]
        text = self.tokenizer.decode(new, skip_special_tokens=True).strip()
        expanded = text.splitlines()[0].strip() if text else prompt  # nothing written: keep it
        return Expansion(prompt=prompt, expanded=expanded, method=self.name, seed=int(seed))


@functools.lru_cache(maxsize=2)
def load_expander(lm_path: str = ""):
    """LMExpander of the local folder `lm_path`, or the GrammarExpander when it is empty (kept
    loaded: sampling asks for it on every call)."""
    return LMExpander(lm_path) if lm_path else GrammarExpander()


# config.sample.expand_prompt: 'auto' expands for the built-in text encoder, whose closed
# vocabulary is the grammar's (a prompt in other words reaches it mostly as unknown tokens),
# and not for a pretrained Hugging Face encoder, which reads free text; booleans (or their
# spelling in a --config flag) force it on or off.
_SETTINGS = {"auto": "auto", "true": True, "false": False}


def expansion_setting(value):
    """'auto', True or False from a config value or flag (bools, or 'auto' / 'true' /
    'false' in any case); ValueError for anything else."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in _SETTINGS:
        return _SETTINGS[value.lower()]
    raise ValueError(f"expand_prompt={value!r}: must be 'auto', true or false")


def validate_config(config) -> None:
    """config.sample.expand_prompt is a setting `expansion_setting` reads."""
    try:
        expansion_setting(config.sample.expand_prompt)
    except ValueError as e:
        raise ValueError(f"config.sample.{e}") from None


def expands(config, expand=None) -> bool:
    """Whether sampling expands prompts: `expand` (None: config.sample.expand_prompt), with
    'auto' on exactly for the built-in (closed-grammar) text encoder."""
    setting = expansion_setting(config.sample.expand_prompt if expand is None else expand)
    return config.text.kind == "tiny" if setting == "auto" else setting


def expand_prompts(config, prompts, seed: int, num_frames: int, expand=None, prompt_lm=None):
    """The `Expansion` of each prompt as sampling makes it (None when expansion is off):
    `expand` as in `expands`, `prompt_lm` None for config.sample.prompt_lm. A prompt the
    expander cannot read raises ValueError when expansion was asked for; under 'auto' it is
    kept as written (method 'as_written', the reason in `note`)."""
    setting = expansion_setting(config.sample.expand_prompt if expand is None else expand)
    if not expands(config, setting):
        return None
    expander = load_expander(config.sample.prompt_lm if prompt_lm is None else prompt_lm)
    out = []
    for p in prompts:
        try:
            out.append(expander.expand(p, seed, num_frames))
        except ValueError as e:
            if setting != "auto":
                raise
            logging.warning("prompt %r sampled as written: %s", p, e)
            out.append(Expansion(p, p, "as_written", int(seed), note=str(e)))
    return out
