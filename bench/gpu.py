"""GPU alignment throughput: vit_base ALTA training steps on one CUDA device (docs/architecture.md, GPU target).

Usage (repository root, on a machine with a CUDA GPU)::

    python bench/gpu.py [--batch 96] [--steps 20] [--warmup 5] [--compile both|off|on] [--peak-tflops T]
                        [--out bench/gpu_results.json]

One measured step is what ``alta align`` does per optimiser step on one device: device-side augmentation of
uint8 views (:class:`alta.train.augment.AltaTrainAugment`: 448 target + four 224 views), ALTA forward (frozen set,
bf16 autocast, SDPA attention in the timm ViT blocks and the BERT text encoder), backward, fused AdamW on the
trainable parameters, logit-scale clamp. Inputs are random uint8 views and random token ids already on the device
(the loader's cost is measured by ``bench/loader.py``); weights are random (cost does not depend on them).

Reported per configuration (eager, and ``torch.compile`` of the model): samples/s (median over timed windows),
peak allocated memory, model FLOPs per sample (``torch.utils.flop_counter`` on one eager step, forward+backward)
and model FLOPs utilisation = FLOPs/s achieved / the device's dense bf16 peak (a table of known devices, or
``--peak-tflops``). Output: a printed table and ``--out`` (JSON with the device, versions and every number).
On a machine without CUDA it prints a message and exits 0 without measuring (``--device cpu`` runs the same code
path on the CPU for checking the script, with the tiny preset by default; its numbers mean nothing for a GPU).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` and `alta` importable from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) from the vendors' data sheets, matched by device name.
PEAK_BF16_TFLOPS = {"H200": 989.4, "H100 SXM": 989.4, "H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.4,
                    "GH200": 989.4, "B200": 2250.0, "A100": 312.0, "A800": 312.0, "L40S": 362.1, "L40": 181.0,
                    "A40": 149.7, "A10": 125.0, "L4": 121.0, "RTX 6000 Ada": 364.2, "RTX 4090": 165.2,
                    "RTX A6000": 154.8, "V100": 125.0}


def peak_tflops(name: str) -> float | None:
    for key in sorted(PEAK_BF16_TFLOPS, key=len, reverse=True):  # most specific name first
        if key.lower() in name.lower():
            return PEAK_BF16_TFLOPS[key]
    return None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python bench/gpu.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default=None, help="model preset (default: vit_base on CUDA, tiny on --device cpu)")
    p.add_argument("--batch", type=int, default=None, help="samples per step (default: 96 on CUDA, 4 on CPU)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per configuration")
    p.add_argument("--warmup", type=int, default=8,
                   help="untimed steps first (compilation and dynamic-shape recompiles happen here)")
    p.add_argument("--compile", choices=["both", "off", "on"], default="both", help="eager, compiled, or both")
    p.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak of the device (TFLOP/s)")
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (script check only)")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "gpu_results.json",
                   help="JSON output (default bench/gpu_results.json)")
    return p


class AlignStep:
    """Model, optimiser, augmentation and fixed inputs of one configuration; ``step()`` is one optimiser step."""

    def __init__(self, preset: str, batch: int, device, compiled: bool):
        import torch

        from alta.models.build import build_alta, param_groups
        from alta.train import augment as A

        self.device, self.batch = device, batch
        torch.manual_seed(0)
        self.model = build_alta(preset, vocab_size=30522 if preset == "vit_base" else 4000,
                                special_ids={"pad": 0, "cls": 2, "sep": 3, "mask": 4}).to(device).train()
        cfg = self.model.cfg
        self.opt = torch.optim.AdamW(param_groups(self.model, 0.05), lr=1.5e-4 * 96 / 256, betas=(0.9, 0.95),
                                     fused=device.type == "cuda")
        self.aug = A.AltaTrainAugment(cfg.img_size, cfg.target_size, torch.Generator().manual_seed(0))
        g = torch.Generator().manual_seed(1)
        crop = cfg.target_size  # the loader's central crop: 448 at vit_base
        self.views = torch.randint(0, 256, (batch, 4, crop, crop), generator=g, dtype=torch.uint8).to(device)
        self.present = torch.ones(batch, 4, dtype=torch.bool, device=device)
        ids = torch.randint(5, self.model.text_vocab_size, (batch, 128), generator=g)
        ids[:, 0], ids[:, -1] = 2, 3
        self.ids, self.am = ids.to(device), torch.ones(batch, 128, dtype=torch.long, device=device)
        self.forward = torch.compile(self.model) if compiled else self.model
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16)

    def loss(self):
        with self.autocast:
            cf_t, views, present = self.aug(self.views, self.present, self.device)
            return self.forward(cf_t, views, present, self.ids, self.am)["loss"]

    def step(self) -> None:
        self.loss().backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.model.clamp_logit_scales()

    def count_flops(self) -> float:
        """Model FLOPs of one forward+backward (eager model; the optimiser and augmentation are not counted)."""
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as fc:
            with self.autocast:
                cf_t, views, present = self.aug(self.views, self.present, self.device)
                loss = self.model(cf_t, views, present, self.ids, self.am)["loss"]
            loss.backward()
        self.opt.zero_grad(set_to_none=True)
        return float(fc.get_total_flops())


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(preset: str, batch: int, device, compiled: bool, steps: int, warmup: int, peak: float | None) -> dict:
    import torch

    s = AlignStep(preset, batch, device, compiled)
    flops = s.count_flops()
    t0 = time.perf_counter()
    for _ in range(warmup):
        s.step()
    _sync(device)
    warm_s = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    windows = []
    per_window = max(1, steps // 4)  # four timed windows -> a median that ignores one hiccup
    done = 0
    while done < steps:
        n = min(per_window, steps - done)
        _sync(device)
        t = time.perf_counter()
        for _ in range(n):
            s.step()
        _sync(device)
        windows.append((time.perf_counter() - t) / n)
        done += n
    step_s = statistics.median(windows)
    res = {"compiled": compiled, "batch": batch, "steps": steps, "warmup_s": round(warm_s, 2),
           "step_s_median": step_s, "step_s_windows": [round(w, 5) for w in windows],
           "samples_per_s": batch / step_s, "model_gflops_per_sample": flops / batch / 1e9,
           "achieved_tflops": flops / step_s / 1e12}
    res["mfu"] = res["achieved_tflops"] / peak if peak else None
    if device.type == "cuda":
        res["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    del s
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return res


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import torch

    from bench import common

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench/gpu.py: no CUDA device on this machine; nothing measured (run it on a GPU node, "
              "or pass --device cpu to check the script).")
        return 0
    preset = args.preset or ("vit_base" if device.type == "cuda" else "tiny")
    batch = args.batch or (96 if device.type == "cuda" else 4)
    info: dict = {"command": "python bench/gpu.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                  "preset": preset, "machine": common.machine_info(), "versions": common.versions(), "runs": {}}
    peak = args.peak_tflops
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        props = torch.cuda.get_device_properties(device)
        peak = peak or peak_tflops(props.name)
        info["device"] = {"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
                          "capability": f"{props.major}.{props.minor}", "cuda": torch.version.cuda,
                          "peak_bf16_tflops": peak, "flash_sdp": torch.backends.cuda.flash_sdp_enabled(),
                          "mem_efficient_sdp": torch.backends.cuda.mem_efficient_sdp_enabled()}
    else:
        info["device"] = {"name": "cpu (script check only)", "peak_bf16_tflops": peak}
    from timm.layers import use_fused_attn

    info["timm_fused_attn"] = bool(use_fused_attn())
    configs = {"off": [False], "on": [True], "both": [False, True]}[args.compile]
    for compiled in configs:
        name = "compiled" if compiled else "eager"
        print(f"[gpu] {preset} batch {batch} {name} ...", file=sys.stderr, flush=True)
        try:
            info["runs"][name] = measure(preset, batch, device, compiled, args.steps, args.warmup, peak)
        except Exception as exc:  # noqa: BLE001 - OOM or a compile failure: report it, measure the other config
            info["runs"][name] = {"error": f"{type(exc).__name__}: {str(exc)[:500]}"}
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    rows = []
    for name, r in info["runs"].items():
        if "error" in r:
            rows.append(common.row("gpu", f"{preset} align {name}", None, "", r["error"][:120]))
            continue
        rows += [common.row("gpu", f"{preset} align {name}: throughput", r["samples_per_s"], "samples/s",
                            f"batch {batch}, bf16 autocast, {'fused ' if device.type == 'cuda' else ''}AdamW, "
                            f"median of {len(r['step_s_windows'])} windows"),
                 common.row("gpu", f"{preset} align {name}: MFU", None if r["mfu"] is None else 100 * r["mfu"], "%",
                            f"{r['achieved_tflops']:.1f} TFLOP/s of {peak} peak; "
                            f"{r['model_gflops_per_sample']:.1f} GFLOPs/sample"),
                 common.row("gpu", f"{preset} align {name}: peak memory", r.get("peak_mem_gib"), "GiB",
                            "torch.cuda.max_memory_allocated")]
    info["rows"] = rows
    print(common.text_table(rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(json.dumps(info, indent=2, sort_keys=True, default=str) + "\n")
    tmp.replace(args.out)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
