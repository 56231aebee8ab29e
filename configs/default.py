"""Base config: every knob of sora_jax lives here; variants override a few fields.

  python -m sora_jax.train --config=configs/default.py --workdir=runs/default

Stages run in order: 'vae' trains the causal video VAE, 'dit' trains the Diffusion
Transformer on the frozen VAE's latents; after the last stage, samples are written.
"""

import ml_collections

from sora_jax.models import wan_presets
from sora_jax.parallel import axes


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.stages = ("vae", "dit")

    # Built-in procedural moving-shapes set (no downloads). Variable duration and aspect.
    c.data = ml_collections.ConfigDict()
    c.data.source = "moving_shapes"
    c.data.seed = 0
    c.data.num_examples = 1_000_000
    c.data.frame_choices = (1, 9, 17)
    c.data.resolutions = ((64, 64), (64, 96), (96, 64))
    c.data.image_fraction = 0.2  # joint image/video training: share of 1-frame examples
    # Attribute values (caption words: colours, shapes, sizes, directions, speeds,
    # backgrounds, textures) the built-in set never draws, e.g. ('magenta',): a model trained
    # without them has never seen the words, for a fine-tune (dit.finetune) to teach later.
    c.data.exclude_words = ()
    c.data.fps = 8  # moving shapes' frame rate; the rate clips are sampled at from files
    # 'moving_shapes' (built in, rendered in memory), 'tfds' (a TFDS video dataset, e.g. the
    # user's videos built by `python -m sora_jax.build_dataset`; decoded by grain, encoded by
    # the VAE on the fly) or 'latent_cache' (latents written by `python -m sora_jax.cache_latents`).
    # The last two need `pip install -e ".[data]"`; see README "Your own videos".
    c.data.tfds_name = "video_clips"
    c.data.tfds_data_dir = ""  # '' = TFDS's default (~/tensorflow_datasets)
    c.data.tfds_split = "train"
    c.data.cache_dir = ""  # the latent cache ('' = <workdir>/latent_cache for cache_latents)
    c.data.max_frames = 17  # clips: the most frames sampled (1 + 4k), at data.fps
    c.data.target_area = 64 * 64  # clips: resized to about this many pixels, aspect kept
    c.data.stats_examples = 256  # latent mean / std from this many examples (grain sources)
    # Videos per VAE call (per shape) when encoding the latent cache or a 'tfds' stream. On CPU
    # small batches stay in cache: the tiny cache encodes 2x faster at 4 than at 32.
    c.data.encode_batch_size = 4
    c.data.worker_count = 0  # grain decode worker processes (0: decode in the main process)
    c.data.max_bad_fraction = 0.05  # more unusable examples than this stops the run
    # Recaptioned training captions: a JSONL manifest with `id` and `dense_caption` (from
    # `python -m sora_jax.recaption` over `python -m sora_jax.captioning.export_shapes`); ''
    # keeps the generator's captions.
    c.data.captions_manifest = ""
    # Validation (grain sources): this share of the examples, chosen by a hash of
    # (val_split_seed, index), is held out of training (dit.train.val_every measures the loss
    # on it). The built-in set validates on unseen generated videos instead.
    c.data.val_fraction = 0.0
    c.data.val_split_seed = 0

    # Device mesh (sora_jax/parallel/mesh.py; README "Scaling out"). Axis sizes inside a slice
    # / node; one may be -1 (the devices left over); their product must be the device count.
    c.mesh = ml_collections.ConfigDict()
    c.mesh.num_devices = -1  # -1: every device (of every process)
    c.mesh.data = -1  # model replicas, each on a slice of the batch
    c.mesh.fsdp = 1  # batch split too, params and optimizer state split across it
    c.mesh.tensor = 1  # attention heads and MLP units split across it
    c.mesh.sequence = 1  # token rows split along their length
    # Self-attention over a split sequence: 'all_to_all' (head/sequence swap, explicit
    # collectives; heads per tensor shard must divide by mesh.sequence) or 'gspmd' (the
    # compiler gathers keys and values).
    c.mesh.sequence_attention = "all_to_all"
    # Across TPU slices / GPU nodes (hybrid mesh): each axis is dcn * (size above) long. Keep
    # the slow network for data (all 1: one slice or node).
    c.mesh.dcn = ml_collections.ConfigDict(dict(data=1, fsdp=1, tensor=1, sequence=1))
    # Logical axis name (used by the model's weights and activations) -> mesh axis / axes /
    # None (unsplit); the first rule whose mesh axis is still free in an array wins.
    c.mesh.rules = (
        (axes.BATCH, ("data", "fsdp")),
        (axes.LENGTH, "sequence"),
        (axes.EMBED, "fsdp"),
        (axes.HEADS, "tensor"),
        (axes.MLP, "tensor"),
        (axes.KV, None),
        (axes.PATCH, None),
        (axes.TEXT_EMBED, None),
        (axes.NORM, None),
        (axes.VOCAB, None),
        (axes.LAYERS, None),
    )

    # Start from a public model: a local diffusers Wan folder (WanPipeline: model_index.json,
    # vae/, transformer/, text_encoder/, tokenizer/, scheduler/). Its VAE (frozen) and UMT5
    # encoder replace the project's, the Wan transformer the DiT (initialised from its
    # weights); sora_jax/models/wan_folder.py fills vae.kind, vae.path, vae.model's geometry,
    # text.*, dit.model.arch, dit.model.wan and dit.patch from it. '' = the project's models.
    c.init = ml_collections.ConfigDict()
    c.init.from_pretrained = ""

    # Causal 3D-conv VAE.
    c.vae = ml_collections.ConfigDict()
    # 'causal' (this project's, trained by the 'vae' stage) or 'wan' (a diffusers
    # AutoencoderKLWan folder at vae.path, frozen; see init.from_pretrained).
    c.vae.kind = "causal"
    c.vae.path = ""
    c.vae.model = ml_collections.ConfigDict()
    c.vae.model.base_channels = 64
    c.vae.model.channel_mults = (1, 2, 4, 4)
    c.vae.model.num_res_blocks = 2
    c.vae.model.latent_channels = 8
    c.vae.model.temporal_downsample = (True, True, False)
    # Per level: halve height and width too (() = every level, the usual VAE).
    c.vae.model.spatial_downsample = ()
    c.vae.model.norm_groups = 16
    c.vae.model.patch_size = 1  # pixel-unshuffle stem (>1: convs run at 1/patch resolution)
    c.vae.model.shortcuts = True  # DC-AE-style residual autoencoding: much faster to train
    # Per-frame self-attention after the encoder's and decoder's mid residual blocks (keeps
    # causality and chunked == full; spatial tiles see only their own part of a frame).
    c.vae.model.mid_attention = False
    c.vae.kl_weight = 1e-6
    c.vae.mse_weight = 1.0  # L2 next to L1 weighs the few large errors (edges, small shapes)
    # Train with posterior samples (a VAE) or with the mean (a KL-regularised autoencoder,
    # which learns fine detail much sooner: short runs).
    c.vae.sample_posterior = True
    # Gaussian noise added to the latents before decoding in training, as a fraction of the
    # latents' per-channel std: a decoder that tolerates small latent errors turns the DiT's
    # imperfect samples into clean videos (without it, 10 % noise ruins the decode).
    c.vae.latent_noise = 0.0
    # Optional perceptual loss: LPIPS (VGG16 features + learned linear heads) with weights read
    # from a local .safetensors / .npz file (layout in sora_jax/models/lpips.py; nothing is
    # downloaded). weight 0 turns it off; evaluate_vae reports LPIPS whenever path is set.
    c.vae.perceptual = ml_collections.ConfigDict()
    c.vae.perceptual.weight = 0.0
    c.vae.perceptual.path = ""
    # Optional 3D patch-GAN (sora_jax/models/discriminator.py, hinge loss): weight 0 turns it
    # off. The decoder's GAN term is weight * adaptive weight (VQGAN: ratio of the gradient norms
    # of the reconstruction and GAN losses at the decoder's last layer, clipped to
    # max_adaptive_weight); both it and the discriminator's loss are off before start_step
    # (not computed: until then a step costs what it costs without the GAN).
    c.vae.gan = ml_collections.ConfigDict()
    c.vae.gan.weight = 0.0
    c.vae.gan.start_step = 5000
    c.vae.gan.channels = (64, 128, 256)  # stem width, then one entry per downsampling level
    c.vae.gan.temporal_downsample = (False, True)  # per level: halve time too
    c.vae.gan.norm_groups = 8
    c.vae.gan.learning_rate = 1e-4  # the discriminator's own AdamW (schedule as vae.train)
    c.vae.gan.max_adaptive_weight = 1e4
    # Batches of training data whose latents' per-channel mean / std are stored with the final
    # VAE checkpoint: the DiT sees (z - mean) / std.
    c.vae.latent_stats_batches = 16
    # Inference on long or large videos (sampling, the DiT's latent cache, evaluate_vae); see
    # sora_jax/models/vae_inference.py.
    c.vae.inference = ml_collections.ConfigDict()
    # Time chunks with a causal cache: the same result as all at once, memory flat in length.
    # Used for videos longer than one chunk (1 + chunk_latent_frames latent frames).
    c.vae.inference.chunked = True
    c.vae.inference.chunk_latent_frames = 4  # x temporal compression = video frames per chunk
    # Overlapping spatial tiles blended linearly (close to, not equal to, untiled; for frames
    # larger than one tile). Sizes in latent pixels (x spatial compression = video pixels).
    c.vae.inference.tiled = False
    c.vae.inference.tile_latent_size = 32
    c.vae.inference.tile_latent_overlap = 8
    # On a sampling mesh (sample.mesh): spread the rows of tiles over its devices, the decoded
    # video split along its height (no device holds all of it). Needs tiled, and tile rows
    # that divide by the device count.
    c.vae.inference.shard_tiles = False
    c.vae.train = _train_config(steps=20_000, learning_rate=1e-4, warmup_steps=500)
    c.vae.train.batch_size = 16  # videos per step, all of one (frames, height, width) bucket
    # The VAE is convolutional, so a few buckets teach every size; the causal first
    # frame is encoded alone, so each video also trains the image (1-frame) path.
    c.vae.train.buckets = ((17, 64, 96), (17, 96, 64), (1, 64, 64))
    # Joint image + video batches: this many still images of the step's bucket size join every
    # batch (0: videos only; the video's causal first frame still trains the image path).
    c.vae.train.image_batch_size = 0
    # 'source': videos of data.source (for the latent cache: the TFDS dataset data.tfds_* it
    # was written from; sora_jax/data/vae_input.py), each fitted to the step's bucket;
    # 'moving_shapes': the built-in set whatever data.source is.
    c.vae.train.data = "source"
    # Every val_every steps (0: never) PSNR / SSIM of val_examples held-out videos per bucket.
    c.vae.train.val_every = 0
    c.vae.train.val_examples = 4

    # Text encoder: 'tiny' (trained jointly with the DiT, closed vocabulary of the
    # built-in captions) or a frozen pretrained one from a local HF folder (config.json,
    # *.safetensors, tokenizer files): 'bert' (BERT family, e.g. all-MiniLM-L6-v2), 't5'
    # (T5 / T5 v1.1 / mT5 / UMT5 encoder) or 'clip' (CLIP text, last hidden state).
    # width / depth / num_heads / mlp_ratio only shape 'tiny'; the others read config.json.
    c.text = ml_collections.ConfigDict()
    c.text.kind = "tiny"
    c.text.path = ""  # the HF model folder (not 'tiny')
    c.text.tokenizer_path = ""  # tokenizer folder if not `path` (e.g. diffusers' tokenizer/)
    c.text.dtype = "float32"  # 'bfloat16': frozen weights and encoder compute in bf16
    # Frozen encoders' caption embeddings are computed once per distinct caption and cached
    # (in memory; also here on disk when set, keyed by the encoder's content hash).
    c.text.cache_dir = ""
    c.text.max_length = 20
    c.text.width = 256
    c.text.depth = 2
    c.text.num_heads = 4
    c.text.mlp_ratio = 4.0

    # Diffusion Transformer over patch-n'-packed latent tokens.
    c.dit = ml_collections.ConfigDict()
    c.dit.model = ml_collections.ConfigDict()
    # 'dit' (this project's DiT, the fields below) or 'wan' (diffusers' WanTransformer3DModel
    # with the architecture of dit.model.wan; dtype, remat_policy and the attention kernel
    # fields apply to both). The Wan fields here are Wan 2.1 T2V 1.3B's.
    c.dit.model.arch = "dit"
    c.dit.model.wan = ml_collections.ConfigDict(wan_presets.WAN_2_1_T2V_1_3B)
    c.dit.model.hidden = 384
    c.dit.model.depth = 12
    c.dit.model.num_heads = 6
    c.dit.model.mlp_ratio = 4.0
    c.dit.model.rope_theta = 10_000.0
    c.dit.model.abs_positions = False  # absolute (frame, centred h, w) embeddings next to RoPE
    # Learned "is-condition" vector added to the tokens of given frames (besides their t = 0).
    c.dit.model.cond_embedding = False
    # Backbone options (sora_jax/models/dit.py). MLP: 'gelu' or 'swiglu' (2/3 the width, same
    # parameters). Text: 'cross' (cross-attention to the caption) or 'joint' (MMDiT: a text
    # stream with its own weights, video and text attend jointly). Self-attention: 'full' 3D
    # or 'factorised' (blocks alternate spatial and temporal attention; a mask, same FLOPs on
    # dense kernels).
    c.dit.model.mlp = "gelu"
    c.dit.model.text_attention = "cross"
    c.dit.model.attention_layout = "full"
    # Compute dtype of activations ('float32' | 'bfloat16'); parameters and optimizer state
    # stay float32, outputs and the loss are float32.
    c.dit.model.dtype = "float32"
    # Rematerialisation of each block (each scanned period) in the backward pass: 'none',
    # 'save_block_inputs' (keep only block inputs, recompute the rest), 'offload_block_inputs'
    # (those inputs in host memory; TPU / GPU), or a jax.checkpoint_policies name
    # ('nothing_saveable', 'dots_saveable', ...).
    c.dit.model.remat_policy = "none"
    # adaLN modulation: 'segment' (each block projects one entry per (segment, time) and
    # gathers it per token), 'token' (projects every token: same values, a reference) or
    # 'shared' (Wan style: one projection for all blocks plus a learned table per block).
    c.dit.model.modulation = "segment"
    # Scan one period of blocks (1, or 2 for 'factorised') over depth instead of unrolling:
    # compile time and program size of one period; params stacked along 'layers'
    # (`python -m sora_jax.export --scan_blocks=...` converts checkpoints).
    c.dit.model.scan_blocks = False
    # Attention kernel (sora_jax/models/attention.py), all taking segment ids: 'auto' (splash
    # on TPU, Pallas flash on GPU, blockwise elsewhere), 'blockwise' (flash-style in plain JAX,
    # skips key blocks of other segments), 'splash', 'flash_gpu', or the dense-mask 'xla' /
    # 'cudnn' (O(L^2) memory, for comparison).
    c.dit.model.attention_impl = "auto"
    # Query / key block sizes of the blockwise and Pallas kernels (splash: multiples of 128).
    c.dit.model.attention_block_q = 512
    c.dit.model.attention_block_kv = 512
    c.dit.patch = (1, 2, 2)
    c.dit.seq_len = 1024
    c.dit.rows = 8  # packed sequences per batch
    c.dit.max_segments = 16  # videos per packed sequence at most
    # Caption tokens per packed sequence at most (0 = off): the DiT packs each row's captions
    # into this many tokens, so text projections and cross-attention follow the captions'
    # real lengths rather than max_segments * text.max_length (here 320 a row).
    c.dit.text_tokens = 0
    # Length-bucketed packing, e.g. (256, 1024): each step packs rows of one of these lengths
    # (the longest = seq_len; same token budget rows * seq_len and max_segments per row;
    # packing.row_shapes), so short videos do not pay dense attention over seq_len.
    # One compile per length. () = every row seq_len. Only with data.source='moving_shapes'.
    c.dit.pack_lengths = ()
    c.dit.latent_cache_size = 16_384  # examples encoded once by the frozen VAE
    # Share of the cached videos whose first frame also trains as an image under the video's
    # caption (motion words included): the image pass of factorised sampling (sample.factorized).
    c.dit.first_frames = 0.0
    c.dit.text_dropout = 0.1  # caption replaced by the empty one, for CFG
    # Token dropping (NaViT): before packing, each video keeps a random subset of its tokens
    # (at their true positions), so more videos fit per row; the dropped ones are in neither
    # the attention nor the loss. Rate at step s: 'constant' = rate; 'linear' = start_rate ->
    # rate over schedule_steps. Per video: 'fixed' = that rate; 'uniform' = drawn in
    # [0, 2 * rate] (mean rate), capped at max_rate. 0 disables dropping.
    c.dit.token_drop = ml_collections.ConfigDict()
    c.dit.token_drop.rate = 0.0
    c.dit.token_drop.schedule = "constant"
    c.dit.token_drop.start_rate = 0.0
    c.dit.token_drop.schedule_steps = 10_000
    c.dit.token_drop.per_example = "fixed"
    c.dit.token_drop.max_rate = 0.9
    # Frame conditioning (image->video, extend, connect; sora_jax/diffusion/conditioning.py):
    # with probability `rate` a packed video's mask of given latent frames is drawn from
    # `mask_types` (relative weights); given frames enter clean at t = 0 and leave the loss.
    c.dit.condition = ml_collections.ConfigDict()
    c.dit.condition.rate = 0.0
    c.dit.condition.mask_types = ml_collections.ConfigDict(
        dict(first=0.4, first_k=0.2, last_k=0.15, both_ends=0.15, random=0.1)
    )
    c.dit.condition.random_frame_prob = 0.5  # per-frame probability of the 'random' type
    # Noise augmentation of the given frames (as SVD): each conditioned video's given frames
    # are noised to a time drawn uniformly in [0, noise] (their own per-token time), so the
    # model learns to use imperfect given frames, e.g. a generated first frame (factorised
    # sampling). Sampling gives them time diffusion.condition_noise. 0: clean given frames.
    c.dit.condition.noise = 0.0
    c.dit.train = _train_config(steps=100_000, learning_rate=3e-4, warmup_steps=1000)
    # Microbatches per step: gradients summed inside the jitted step (same update as the whole
    # batch at 1/k of the activation memory). The batch must split into k equal microbatches
    # on every data device.
    c.dit.train.grad_accum_steps = 1
    # Train steps per host call (one compiled loop over that many batches): fewer dispatches
    # and per-step buffer allocations, the same steps. Calls also end where the host logs,
    # saves or validates. The DiT's batches all have one shape; the VAE's (one bucket per
    # step) do not, so the VAE runs one step per call.
    c.dit.train.steps_per_call = 1
    # Validation (sora_jax/training/validation.py): every val_every steps (0: never) the loss
    # on up to val_examples held-out videos at times and noise fixed by val_seed; every
    # sample_every steps (0: never) samples of sample.prompts into <workdir>/dit/val_samples
    # and TensorBoard.
    c.dit.train.val_every = 0
    c.dit.train.val_examples = 16
    c.dit.train.val_seed = 0
    c.dit.train.sample_every = 0
    # Fine-tuning: start from the DiT of `init_from` (an export or a training workdir whose
    # DiT config matches; '' = from scratch) and train all of it but the params whose path
    # matches `freeze` (regex, e.g. 'text_proj|text_pool_proj') ('full'), or only low-rank
    # adapters on the dense layers whose name matches `lora_targets` ('lora'; the update is
    # scaled by lora_alpha / lora_rank; lora_dropout on the adapters' input). Exports merge
    # the adapters into the weights.
    c.dit.finetune = ml_collections.ConfigDict()
    c.dit.finetune.mode = "full"  # 'full' | 'lora'
    c.dit.finetune.init_from = ""
    c.dit.finetune.freeze = ""
    c.dit.finetune.lora_rank = 16
    c.dit.finetune.lora_alpha = 16.0
    c.dit.finetune.lora_dropout = 0.0
    c.dit.finetune.lora_targets = "qkv|attn_out|cross_q|cross_kv|cross_out|mlp_in|mlp_out"
    # A LoRA run's starting adapters: a folder of `python -m sora_jax.export --adapters_only`
    # (same rank, alpha, targets) instead of fresh ones; the base is still init_from.
    c.dit.finetune.adapters_from = ""

    # Diffusion objective (the same DiT learns either) and sampler; see README "Objectives and
    # samplers". Times t in [0, 1]: 0 is data, 1 is noise.
    c.diffusion = ml_collections.ConfigDict()
    c.diffusion.objective = "rectified_flow"  # velocity prediction; or 'ddpm' (see .ddpm)
    # Training-time distribution (DDPM rounds it up to its discrete steps): 'logit_normal',
    # 'uniform' or 'mode' (SD3's mode sampling with scale mode_scale; 0 is uniform).
    c.diffusion.timestep_sampling = "logit_normal"
    c.diffusion.logit_mean = 0.0
    c.diffusion.logit_std = 1.0
    c.diffusion.mode_scale = 1.29
    # Time shift t -> s t / (1 + (s - 1) t); s > 1 spends more steps at high noise. 'fixed':
    # s = time_shift; 'tokens': s = time_shift * sqrt(tokens / shift_base_tokens) clipped to
    # [1 / shift_max, shift_max], so larger / longer videos (more latent tokens) get more noise.
    c.diffusion.shift_mode = "fixed"
    c.diffusion.time_shift = 1.0
    c.diffusion.shift_base_tokens = 256
    c.diffusion.shift_max = 4.0
    c.diffusion.shift_in_training = False  # shift the training times too (else sampling only)
    # DDPM (variance preserving), used when objective='ddpm'.
    c.diffusion.ddpm = ml_collections.ConfigDict()
    c.diffusion.ddpm.prediction = "eps"  # 'eps' | 'x0' | 'v'
    c.diffusion.ddpm.schedule = (
        "linear"  # 'linear' | 'scaled_linear' (SD: 0.00085..0.012) | 'cosine'
    )
    c.diffusion.ddpm.num_train_steps = 1000
    c.diffusion.ddpm.beta_start = 1e-4
    c.diffusion.ddpm.beta_end = 0.02
    c.diffusion.ddpm.cosine_s = 0.008
    c.diffusion.ddpm.zero_terminal_snr = False  # rescale so t=1 is pure noise (needs x0 or v)
    c.diffusion.ddpm.min_snr_gamma = 0.0  # > 0: min-SNR-gamma loss weighting (e.g. 5)
    # Sampler: 'euler' | 'heun' (flow ODE), 'ddim' (ddim_eta: 0 deterministic, 1 ancestral),
    # 'dpmpp_2m' (DPM-Solver++ 2M), 'unipc' (UniPC-2 with corrector); any with either objective.
    c.diffusion.sampler = "euler"
    c.diffusion.sample_steps = 30
    # Time grid: 'uniform', 'shifted' (uniform then the time shift above) or 'karras' (noise
    # ratios sigma/alpha from karras_sigma_max to karras_sigma_min, denser at low noise) or
    # 'flow_match' (diffusers' flow-matching grid over 1000 train steps, then the shift).
    c.diffusion.spacing = "shifted"
    c.diffusion.ddim_eta = 0.0
    c.diffusion.karras_rho = 7.0
    c.diffusion.karras_sigma_min = 0.002
    c.diffusion.karras_sigma_max = 80.0
    # Classifier-free guidance on the model output, only for t in guidance_interval; with
    # guidance_rescale = phi > 0 the guided output's std is pulled back to the conditional one's.
    c.diffusion.guidance_scale = 4.0
    c.diffusion.guidance_interval = (0.0, 1.0)
    c.diffusion.guidance_rescale = 0.0
    # Time of the given frames while sampling (see dit.condition.noise); the output keeps them
    # clean.
    c.diffusion.condition_noise = 0.0

    # Samples written at the end of training (and the sampling CLI's defaults).
    c.sample = ml_collections.ConfigDict()
    c.sample.prompts = (
        "a large red circle moves right steadily on a grey background",
        "a large blue square moves up steadily on a black background",
        "a large yellow triangle moves left quickly on a white background",
        "a medium green circle moves down steadily on a grey checkered background",
    )
    c.sample.num_frames = 17
    c.sample.height = 64
    c.sample.width = 96
    c.sample.seed = 0
    # Factorised text->video (as Emu Video): sample the first frame as an image from the text,
    # then the video with that frame given (image->video). For models trained with
    # dit.condition on the first frame: motion words then steer a frame the model can see.
    c.sample.factorized = False
    # The prompt of the factorised image pass: 'same' (the video's prompt, as Emu Video) or
    # 'first_frame' (sora_jax.prompts.first_frame_prompt: a moving-shapes caption without its
    # motion clause, the form of the training images' captions; other prompts unchanged).
    c.sample.image_prompt = "same"
    # Prompt expansion in sampling (the CLI, Pipeline.generate, end-of-run samples;
    # sora_jax/inference/prompts.py): rewrite each prompt in the training captions' style
    # first, with the local instruction-tuned LM folder `prompt_lm`, or, when it is '', the
    # built-in moving-shapes expander. 'auto': on for the built-in text encoder (its closed
    # vocabulary is the captions'; a prompt it cannot read is sampled as written), off for a
    # pretrained one; True / False force it.
    c.sample.expand_prompt = "auto"
    c.sample.prompt_lm = ""
    # Device mesh of sampling (the sampling CLI's --mesh; README "Using it"): '' one device,
    # 'config' the mesh section above, or axis sizes such as 'data:2,sequence:4'. The DiT runs
    # sharded by mesh.rules (CFG's conditional and unconditional rows split over the batch
    # axes, rows along their length over 'sequence').
    c.sample.mesh = ""

    # Prompt-following evaluation (python -m sora_jax.evaluate).
    c.eval = ml_collections.ConfigDict()
    c.eval.num_prompts = 32
    c.eval.seed = 10_000  # prompts and noise from seeds never used in training
    c.eval.at_end = True  # after training; on the built-in set only (it judges moving shapes)
    return c


def _train_config(*, steps, learning_rate, warmup_steps):
    t = ml_collections.ConfigDict()
    t.steps = steps
    t.learning_rate = learning_rate
    t.warmup_steps = warmup_steps
    t.weight_decay = 0.0
    t.grad_clip = 1.0
    t.ema_decay = 0.999
    t.log_every = 50
    t.checkpoint_every = 1000
    t.keep_checkpoints = 2
    # A step whose loss or gradients are NaN/inf: False stops the run there (nothing non-finite
    # is ever checkpointed); True skips that step's update and goes on (README: "When things go
    # wrong").
    t.skip_nonfinite = False
    return t
