"""Prompt expansion: the built-in grammar expander (on prompts written as users type them), a
tiny random-init LM expander, expansion on by default for the built-in text encoder, and the
expansion log the sampling CLI writes beside each sample."""

import json
import os

import numpy as np
import pytest

from sora_jax import config as config_lib
from sora_jax.data import shapes, video_io
from sora_jax.evaluation import prompt_eval
from sora_jax.evaluation.user_prompts import USER_PROMPTS
from sora_jax.inference import prompts
from test_modes import pipe, workdir  # noqa: F401 (module fixtures: a random pipeline, a workdir)
from test_train import run_cli


def test_grammar_expander_keeps_the_given_and_fills_the_rest():
    e = prompts.GrammarExpander().expand("a big red ball moving to the upper left", seed=3)
    attrs = shapes.parse_caption(e.expanded)  # a caption of the training grammar
    assert e.given == {"size": "large", "colour": "red", "shape": "circle", "direction": "up-left"}
    assert {k: attrs[k] for k in e.given} == e.given
    assert set(e.sampled) == {"speed", "background", "texture"}
    assert all(attrs[k] == v for k, v in e.sampled.items())
    assert e.ignored == ("a", "moving", "to", "the")
    # Deterministic by seed; other seeds draw other fillings.
    assert prompts.GrammarExpander().expand(e.prompt, seed=3) == e
    fillings = {prompts.GrammarExpander().expand(e.prompt, seed=s).expanded for s in range(12)}
    assert len(fillings) >= 6


def test_first_frame_prompt_drops_the_motion_clause_only():
    video = "a small red circle moves up-left slowly on a grey checkered background"
    assert prompts.first_frame_prompt(video) == "a small red circle on a grey checkered background"
    image = "a large blue square on a white background"
    assert prompts.first_frame_prompt(image) == image
    assert prompts.first_frame_prompt("a cat walks left") == "a cat walks left"  # not grammar


def test_grammar_expander_fillings_are_spread_over_the_grammar():
    drawn = [prompts.GrammarExpander().expand("a blue square", seed=s) for s in range(300)]
    for name, options in (("size", shapes.SIZES), ("speed", shapes.SPEEDS)):
        counts = [sum(e.sampled[name] == o for e in drawn) for o in options]
        assert min(counts) > 300 / len(options) * 0.6, (name, counts)
    assert {e.sampled["background"] for e in drawn} == set(shapes.BACKGROUNDS)


def test_grammar_expander_edge_cases():
    g = prompts.GrammarExpander()
    full = "a small green triangle moves down slowly on a white noisy background"
    e = g.expand(full, seed=0)
    assert e.expanded == full and e.sampled == {}
    # A named background without a texture stays plain; images get no motion clause.
    e = g.expand("a cyan circle on a black background", seed=1, num_frames=1)
    assert e.expanded.endswith("circle on a black background") and "moves" not in e.expanded
    with pytest.raises(ValueError, match="two colours"):
        g.expand("a red and blue circle")
    with pytest.raises(ValueError, match="names nothing of the moving-shapes grammar"):
        g.expand("a dog playing in the park")


def test_user_prompts_are_read_whole():
    """Prompts phrased as people type them (written apart from the expander's word lists):
    every attribute each names reaches the expanded caption."""
    g = prompts.GrammarExpander()
    assert len(USER_PROMPTS) == 48
    for prompt, named in USER_PROMPTS:
        e = g.expand(prompt, seed=0, num_frames=9)
        attrs = shapes.parse_caption(e.expanded)
        assert {k: e.given.get(k) for k in named} == named, prompt
        assert {k: attrs[k] for k in named} == named, prompt


@pytest.mark.parametrize("path", ["configs/tiny.py", "configs/default.py"])
def test_captions_of_the_grammar_expand_to_themselves(path):
    """Expansion on by default must not change a caption the model was trained on: the
    config's sample prompts and the evaluation's held-out captions, videos and images."""
    c = config_lib.load(path)
    held_out = lambda n: [  # noqa: E731
        shapes.caption(a) for a in prompt_eval.eval_prompts(40, 10_000, n, 32, 48)
    ]
    for frames, captions in (
        (c.sample.num_frames, list(c.sample.prompts)),
        (9, held_out(9)),
        (1, held_out(1)),
    ):
        for seed in (0, 7):
            expanded = prompts.expand_prompts(c, captions, seed, frames)
            assert [e.expanded for e in expanded] == captions


def test_expansion_is_on_by_default_for_the_built_in_text_encoder_only(caplog):
    c = config_lib.load("configs/tiny.py")
    assert c.sample.expand_prompt == "auto" and prompts.expands(c)
    c.text.kind = "t5"
    assert not prompts.expands(c) and prompts.expand_prompts(c, ["red ball"], 0, 9) is None
    assert prompts.expands(c, "TRUE") and not prompts.expands(c, False)
    c.text.kind = "tiny"
    # Under 'auto' a prompt outside the grammar is sampled as written, saying why; asked for
    # explicitly, expansion refuses it.
    kept, ball = prompts.expand_prompts(c, ["a dog playing in the park", "red ball going up"], 0, 9)
    assert (kept.expanded, kept.method) == ("a dog playing in the park", "as_written")
    assert "names nothing of the moving-shapes grammar" in kept.note
    assert "'a dog playing in the park' sampled as written: " in caplog.text
    assert ball.method == "grammar" and ball.given["direction"] == "up"
    with pytest.raises(ValueError, match="names nothing"):
        prompts.expand_prompts(c, ["a dog playing in the park"], 0, 9, expand=True)
    c.sample.expand_prompt = "sometimes"
    with pytest.raises(ValueError, match="config.sample.expand_prompt='sometimes': must be"):
        config_lib.validate(c)


def test_generate_expands_prompts_by_default(pipe):  # noqa: F811
    """Pipeline.generate's default path reads a user's prompt as its expansion (seeded by the
    sampling seed); expand_prompt=False samples it as written."""
    kw = dict(num_frames=5, height=16, width=16, seed=4, steps=1)
    user = ["red ball going up", "a blue square sliding left"]
    expanded = [e.expanded for e in prompts.expand_prompts(pipe.config, user, 4, 5)]
    default = pipe.generate(user, **kw)
    np.testing.assert_array_equal(default, pipe.generate(expanded, expand_prompt=False, **kw))
    assert not np.array_equal(default, pipe.generate(user, expand_prompt=False, **kw))


def _tiny_chat_lm(path, chat_template=True):
    """A randomly initialised GPT-2 with a word-level tokenizer of the grammar's words and a
    chat template, saved like a Hugging Face folder (nothing downloaded)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers

    special = ["[PAD]", "[EOS]", "[UNK]", "<|system|>", "<|user|>", "<|assistant|>"]
    words = special + list(shapes.VOCABULARY)
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", eos_token="[EOS]", unk_token="[UNK]"
    )
    if chat_template:
        tokenizer.chat_template = (
            "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} {% endfor %}"
            "{% if add_generation_prompt %}<|assistant|> {% endif %}"
        )
    config = transformers.GPT2Config(
        vocab_size=len(words), n_positions=512, n_embd=32, n_layer=1, n_head=2, eos_token_id=1
    )
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config)
    with torch.no_grad():  # words only (special tokens' logits 0), sharper than at init
        for p in model.parameters():
            p.mul_(4.0)
        model.lm_head.weight[: len(special)] = 0.0
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def test_lm_expander_uses_the_chat_template_and_is_deterministic_by_seed(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = _tiny_chat_lm(tmp_path / "lm")
    lm = prompts.LMExpander(path, max_new_tokens=8, temperature=1.0)
    chat = lm.chat("a red circle")
    assert chat.startswith("<|system|> You rewrite short video prompts")
    assert all(c in chat for c in prompts.example_captions())  # the caption style is shown
    assert chat.endswith("<|user|> a red circle <|assistant|> ")
    a, b, c = (lm.expand("a red circle", seed=s) for s in (0, 0, 1))
    assert a == b and a.expanded != c.expanded and a.method == f"lm:{path}"
    assert 1 <= len(a.expanded.split()) <= 8
    assert set(a.expanded.split()) <= set(shapes.VOCABULARY)  # decoded from the model's words
    greedy = prompts.LMExpander(path, max_new_tokens=8, temperature=0.0)
    assert greedy.expand("a red circle", 0).expanded == greedy.expand("a red circle", 5).expanded
    with pytest.raises(OSError):
        prompts.LMExpander(str(tmp_path / "missing"))
    no_template = _tiny_chat_lm(tmp_path / "plain", chat_template=False)
    with pytest.raises(ValueError, match="chat template"):
        prompts.LMExpander(no_template)


def test_sample_cli_logs_the_expansion_beside_each_sample(workdir, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    base = [f"--workdir={workdir}", "--frames=5", "--height=16", "--width=16", "--steps=1"]
    r = run_cli(
        "sora_jax.sample",
        *base,
        "--prompt=a red ball",
        "--prompt=a blue box moving left",
        "--expand_prompt",
        "--seed=7",
        f"--out={out}",
    )
    assert r.returncode == 0, r.stderr
    logs = sorted(p for p in os.listdir(out) if p.endswith(".json"))
    assert len(logs) == 2 and len(os.listdir(out)) == 7  # + mp4, gif each, and index.html
    records = [json.load(open(out / p)) for p in logs]
    expected = {
        p: prompts.GrammarExpander().expand(p, 7, 5).expanded
        for p in ("a red ball", "a blue box moving left")
    }
    for rec, log in zip(records, logs):
        assert rec["expanded_prompt"] == expected[rec["prompt"]]
        assert rec["expansion"]["method"] == "grammar" and rec["expansion"]["seed"] == 7
        mp4 = out / log.replace(".json", ".mp4")
        assert video_io.read_metadata(mp4)["title"] == rec["expanded_prompt"]
