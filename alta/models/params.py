"""``alta params``: parameter breakdown of a preset (docs/method.md §1.1 and §2.11), built on the meta device.

Usage: ``alta params --preset vit_base [--mode faithful|recommended] [--model alta|mrm] [--json OUT]``.
Inputs: none (the model is instantiated without weights). Output: a table on stdout with, per module group and per
component, Σ numel over ``named_parameters()`` (tied weights once; frozen constants included) and the trainable
part; ``--json`` also writes the same numbers as JSON (atomically).

Library: ``breakdown(model) -> {'groups': {name: {'total', 'trainable'}}, 'components': {...}, 'total',
'trainable'}``; ``build_for_count(model, preset, mode, options)`` builds the meta model.
"""

from __future__ import annotations

import argparse
import re
from typing import Any

import torch
from torch import nn

# (component, group, pattern) — first match wins
_ALTA_RULES = [
    ("decoder embed/mask/pred", "decoder", r"^(decoder_embed\.|mask_token$|decoder_pred\.)"),
    ("decoder LNs", "decoder", r"^(decoder_norm\.|decoder_blocks\.\d+\.norm[12]\.)"),
    ("decoder blocks attn/MLP", "decoder", r"^decoder_blocks\."),
    ("decoder pos_embed", "decoder", r"^decoder_pos_embed$"),
    ("text adapters", "text", r"^bert_encoder\.bert\.encoder\.layer\.\d+\.(attn|mlp)_adapter\."),
    ("text LNs", "text", r"^bert_encoder\.bert\.(embeddings|encoder\.layer\.\d+\.(attention\.output|output))\.LayerNorm\."),
    ("MLM transform + bias", "text", r"^bert_encoder\.cls\.predictions\."),
    ("text heads", "text", r"^bert_encoder\.(cls|local)_projection_head\."),
    ("text backbone", "text", r"^bert_encoder\."),
    ("vision adapters", "vision", r"^blocks\.\d+\.(attn|mlp)_adapter\."),
    ("vision LNs", "vision", r"^(norm\.|blocks\.\d+\.norm[12]\.)"),
    ("vision backbone", "vision", r"^(patch_embed\.|blocks\.)"),
    ("cls_token", "vision", r"^cls_token$"),
    ("temporal + view embeddings", "vision", r"^(temporal|view)_embedding$"),
    ("pos_embed", "vision", r"^pos_embed$"),
    ("missing_token", "vision", r"^missing_token$"),
    ("bert_embed", "vision", r"^bert_embed\."),
    ("image heads", "vision", r"^(local_)?projection_head\."),
    ("logit scales", "vision", r"^logit_scale"),
]
_MRM_RULES = [
    ("encoder", "encoder", r"^(patch_embed\.|cls_token$|pos_embed$|blocks\.|norm\.)"),
    ("decoder", "decoder", r"^(decoder_|mask_token$)"),
    ("bert_mlp", "bert_mlp", r"^bert_mlp\."),
    ("report decoder", "report_decoder", r"^bert_encoder\.model\."),
]


def breakdown(model: nn.Module) -> dict[str, Any]:
    model = getattr(model, "module", model)
    rules = _MRM_RULES if hasattr(model, "bert_mlp") else _ALTA_RULES
    compiled = [(c, g, re.compile(p)) for c, g, p in rules]
    groups: dict[str, dict[str, int]] = {}
    comps: dict[str, dict[str, int]] = {}
    for name, p in model.named_parameters():
        match = next(((c, g) for c, g, rx in compiled if rx.search(name)), None)
        if match is None:
            raise KeyError(f"parameter {name} matches no group of the breakdown")
        for table, key in ((comps, match[0]), (groups, match[1])):
            row = table.setdefault(key, {"total": 0, "trainable": 0})
            row["total"] += p.numel()
            row["trainable"] += p.numel() if p.requires_grad else 0
    total = sum(r["total"] for r in groups.values())
    trainable = sum(r["trainable"] for r in groups.values())
    return {"groups": groups, "components": comps, "total": total, "trainable": trainable}


def build_for_count(model: str = "alta", preset: str = "vit_base", mode: str = "recommended",
                    options: dict | None = None) -> nn.Module:
    from .build import build_alta, build_mrm

    if model == "mrm":
        vocab = 30000 if preset == "vit_base" else 1000  # the word-piece table does not change any count
        return build_mrm(preset, mode, vocab_size=vocab, device="meta", pad_token_id=0, mask_token_id=3,
                         cls_token_id=2, options=options, is_continuation=torch.zeros(vocab, dtype=torch.bool))
    vocab = None if preset == "vit_base" else 1000  # tiny: tokenizer-sized in practice; 1000 for counting
    # special ids do not change any count
    return build_alta(preset, mode, vocab_size=vocab, special_ids=dict(pad=0, cls=2, sep=3, mask=4),
                      options=options, device="meta")


def format_table(info: dict[str, Any]) -> str:
    lines = [f"{'group / component':40s} {'params':>14s} {'trainable':>14s}"]
    for title, table in (("groups", info["groups"]), ("components", info["components"])):
        lines.append(f"-- {title}")
        lines += [f"{k:40s} {v['total']:>14,d} {v['trainable']:>14,d}" for k, v in table.items()]
    pct = 100.0 * info["trainable"] / info["total"]
    lines.append(f"{'TOTAL':40s} {info['total']:>14,d} {info['trainable']:>14,d}  ({pct:.2f} % trainable)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="alta params", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="vit_base", help="model preset (vit_base | tiny)")
    ap.add_argument("--mode", default="recommended", choices=["faithful", "recommended"])
    ap.add_argument("--model", default="alta", choices=["alta", "mrm"])
    ap.add_argument("--learned-missing-token", action="store_true", help="count with align.learned_missing_token")
    ap.add_argument("--json", default=None, help="also write the breakdown to this JSON file")
    args = ap.parse_args(argv)
    options = {"learned_missing_token": True} if args.learned_missing_token else None
    info = breakdown(build_for_count(args.model, args.preset, args.mode, options))
    print(f"{args.model} preset={args.preset} mode={args.mode}")
    print(format_table(info))
    if args.json:
        from ..io import write_json

        write_json(args.json, {"model": args.model, "preset": args.preset, "mode": args.mode, **info})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
