"""The planner's analytic memory estimate against the compiled train step, per chip, for DiT
configurations at video lengths on TPU slices (compiled ahead of time on any host with libtpu:
``pip install -e ".[tpu]"``; nothing runs on a TPU).

  JAX_PLATFORMS=cpu python benchmarks/plan_vs_compiled.py [--cases=xl_480p,xl_720p_v5p16,...]

Each case is ``python -m sora_jax.plan --config=... --topology=... --mesh=...`` with the
overrides listed in CASES. Prints per case: topology, mesh, tokens per row, XLA's per-chip peak,
the estimate and their ratio, whether it fits the chip's HBM, the [rows, L, *] all-gathers
left in the program and the compile time.
"""

import argparse

from sora_jax import config as config_lib
from sora_jax.training import planning

# name: (config, topology, mesh, overrides). Tokens per row: one video per row, patch
# (1, 2, 2) on 8x8-downsampled 4x-causal latents, padded up to a multiple of 1024.
CASES = {
    # 480p x 81 frames: 21 x 30 x 52 = 32,760 tokens; one row per chip.
    "xl_480p": ("configs/dit.py:XL", "v5p-8", "fsdp:4", {"rows": 4, "seq_len": 32768}),
    # 720p x 129 frames: 33 x 45 x 80 = 118,800 tokens, split over 'sequence'.
    "xl_720p_v5p16": (
        "configs/dit.py:XL", "v5p-16", "fsdp:2,sequence:4", {"rows": 2, "seq_len": 119808}
    ),
    "xl_720p_v5p32": (
        "configs/dit.py:XL", "v5p-32", "fsdp:2,sequence:8", {"rows": 2, "seq_len": 119808}
    ),
    "xl_8k": ("configs/dit.py:XL", "v5p-8", "fsdp:4", {"rows": 4, "seq_len": 8192}),
    "xl_8k_unrolled": (
        "configs/dit.py:XL", "v5p-8", "fsdp:4",
        {"rows": 4, "seq_len": 8192, "model.scan_blocks": False},
    ),
    "xl_8k_inputs": (
        "configs/dit.py:XL", "v5p-8", "fsdp:4",
        {"rows": 4, "seq_len": 8192, "model.remat_policy": "save_block_inputs"},
    ),
    # Fine-tuning XL at 480p x 81 frames on a v5e-8 (16 GiB chips): all of it, or LoRA.
    "xl_480p_v5e8": ("configs/dit.py:XL", "v5e-8", "fsdp:8", {"rows": 8, "seq_len": 32768}),
    "xl_480p_v5e8_lora": (
        "configs/dit.py:XL", "v5e-8", "fsdp:8",
        {"rows": 8, "seq_len": 32768, "finetune.mode": "lora"},
    ),
    # Public Wan transformers fine-tuned at 480p x 81 frames (32,760 tokens), fsdp over chips.
    "wan_1_3b_480p_v5e8": (
        "configs/wan2_1_t2v_1_3b.py", "v5e-8", "fsdp:8", {"rows": 8, "seq_len": 32768}
    ),
    "wan_1_3b_480p_v5p8": (
        "configs/wan2_1_t2v_1_3b.py", "v5p-8", "fsdp:4", {"rows": 4, "seq_len": 32768}
    ),
    "wan_14b_480p_v5p8": (
        "configs/wan2_1_t2v_14b.py", "v5p-8", "fsdp:4", {"rows": 4, "seq_len": 32768}
    ),
    # The whole 14B step needs more host memory to compile than 24 GiB; subsets of its 40
    # blocks give the per-block cost at its width to extrapolate from. One clip per chip:
    # 480p, and 720p x 81 frames (21 x 45 x 80 = 75,600 tokens).
    **{
        f"wan_14b_{res}_{topology.replace('-', '')}_{n}_blocks": (
            f"configs/wan2_1_t2v_14b.py:{res}", topology, f"fsdp:{chips}",
            {"rows": chips, "seq_len": seq_len, "model.wan.num_layers": n},
        )
        for res, seq_len in (("480p", 32768), ("720p", 75776))
        for topology, chips in (("v5p-8", 4), ("v5p-16", 8), ("v5p-32", 16))
        for n in (2, 4, 8, 16)
    },
    "b_16k_v5e": ("configs/dit.py:B", "v5e-8", "fsdp:8", {"rows": 8, "seq_len": 16384}),
    "s_4k_dots": (
        "configs/dit.py:S", "v5e-8", "fsdp:8",
        {"rows": 8, "seq_len": 4096, "model.remat_policy": "dots_saveable"},
    ),
    "s_4k_none": (
        "configs/dit.py:S", "v5e-8", "data:8",
        {"rows": 8, "seq_len": 4096, "model.remat_policy": "none"},
    ),
}  # fmt: skip


def configure(spec: str, overrides: dict):
    path, _, arg = spec.partition(":")
    c = config_lib.load_with_arg(path, arg) if arg else config_lib.load(path)
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = c.dit
        for name in parents:
            node = node[name]
        node[leaf] = value
    # One video filling each row: the data's largest size must fit seq_len.
    c.data.resolutions = ((256, 256),)
    c.data.frame_choices = (1,)
    return c


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--cases", default=",".join(CASES))
    args = p.parse_args()
    print("case | topology | mesh | tokens/row | compiled peak | estimate | est/compiled | fits "
          "| [rows,L] gathers | compile")  # fmt: skip
    for name in args.cases.split(","):
        spec, topology, mesh, overrides = CASES[name]
        target = planning.compile_target(topology)
        n = len(target.devices)
        c = configure(spec, overrides)
        c = config_lib.validate(planning.configure_mesh(c, planning.parse_mesh(mesh), n))
        r = planning.compiled_plan(c, target)
        comp = r["compiled"]
        peak, est = comp["peak_bytes"] / 2**30, r["per_device"]["total_bytes"] / 2**30
        gathers = comp["activation_all_gathers"]
        print(
            f"{name} | {topology} | {mesh} | {c.dit.seq_len:,} | {peak:.2f} GiB | {est:.2f} GiB | "
            f"{est / peak if peak else float('nan'):.2f} | {'yes' if comp['fits'] else 'no'} | "
            f"{'-' if gathers is None else len(gathers)} | {comp['compile_seconds']:.0f} s",
            flush=True,
        )


if __name__ == "__main__":
    main()
