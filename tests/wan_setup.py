"""Tiny random Wan pipelines for the tests (VAE, transformer, UMT5 with a locally built
word-level tokenizer, UniPC or flow-match Euler scheduler), saved with `save_pretrained`."""

from __future__ import annotations

import os

import diffusers
import torch
import transformers

os.environ["HF_HUB_OFFLINE"] = "1"
WORDS = "a red blue green circle square moves left right up down slowly on grey background".split()
SPECIALS = ["<pad>", "</s>", "<unk>"]
PROMPT = "a red circle   moves left slowly on a grey background &amp; up"
NEGATIVE = "a blue square"
SIZE = dict(num_frames=5, height=32, width=32)  # latents 2 x 4 x 4, 2 x 2 x 2 tokens
LATENT = (2, 4, 4, 4)  # t h w c


def tokenizer(folder, words=WORDS):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    vocab = {t: i for i, t in enumerate(SPECIALS + list(words) + ["&"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", vocab["</s>"])]
    )
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "tokenizer.json")
    tok.save(path)
    return transformers.PreTrainedTokenizerFast(
        tokenizer_file=path, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    ), len(vocab)


def perturb(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model.eval()


def scheduler(kind, shift):
    if kind == "unipc":
        return diffusers.UniPCMultistepScheduler(
            prediction_type="flow_prediction",
            use_flow_sigmas=True,
            flow_shift=shift,
            num_train_timesteps=1000,
        )
    return diffusers.FlowMatchEulerDiscreteScheduler(shift=shift, num_train_timesteps=1000)


# Wan 2.2's VAE form (residual blocks, 2x2 patchified pixels, 4x16x16) on the tiny widths.
WAN22_VAE = dict(
    is_residual=True, in_channels=12, out_channels=12, patch_size=2, scale_factor_spatial=16
)


def tiny_pipeline(tmp_path, kind="unipc", shift=3.0, seed=0, words=WORDS, wan22=False):
    """A random tiny WanPipeline saved with `save_pretrained` under tmp_path: (pipe, folder).
    `wan22`: Wan 2.2 TI2V's form (its VAE, a given first frame at t = 0, expand_timesteps)."""
    torch.manual_seed(seed)
    tok, vocab = tokenizer(str(tmp_path / "tok_src"), words)
    text_encoder = transformers.UMT5EncoderModel(
        transformers.UMT5Config(
            vocab_size=vocab,
            d_model=32,
            d_kv=8,
            d_ff=48,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            relative_attention_max_distance=12,
            pad_token_id=0,
            eos_token_id=1,
        )
    )
    vae = diffusers.AutoencoderKLWan(
        base_dim=8,
        z_dim=4,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
        latents_mean=[0.1, -0.2, 0.3, 0.0],
        latents_std=[1.5, 0.5, 2.0, 1.0],
        **(WAN22_VAE if wan22 else {}),
    )
    transformer = diffusers.WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        out_channels=4,
        text_dim=32,
        freq_dim=16,
        ffn_dim=32,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    )
    pipe = diffusers.WanPipeline(
        tokenizer=tok,
        text_encoder=perturb(text_encoder, seed),
        transformer=perturb(transformer, seed + 1),
        vae=perturb(vae, seed + 2),
        scheduler=scheduler(kind, shift),
        **(dict(expand_timesteps=True) if wan22 else {}),
    )
    folder = str(tmp_path / "wan")
    pipe.save_pretrained(folder)
    return pipe, folder
