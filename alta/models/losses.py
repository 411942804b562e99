"""Contrastive losses of ALTA (docs/method.md §2.8) with cross-rank gathering.

Contract:
- ``gather_with_grad(x)``: concatenation over ranks along dim 0 with gradient (``torch.distributed.nn``); identity
  when not distributed or world size 1 (§3 #11). ``gather_no_grad`` for integer side data (lengths, masks).
- ``global_contrastive_loss(img (B,P), txt (B,P), logit_scale)``: symmetric InfoNCE on the gathered global batch;
  inputs already L2-normalised; ``logit_scale`` is the log temperature parameter (s = exp).
- ``caption_lengths(attention_mask (B,T)) -> (B,)``: number of attended tokens − 1 (words after [CLS]),
  computed from the B clean rows of the local rank (§3 #1 fix).
- ``local_similarity(regions (Bi,K,P), words (Bt,W,P), cap_lens (Bt,), t1, t2, t3, region_mask) -> (Bi,Bt)``:
  GLoRIA word-region score S(b,i), words beyond ``cap_lens[i]`` and regions where ``region_mask`` is False are
  excluded from the softmaxes / sums.
- ``local_contrastive_loss(regions, words, cap_lens, log_scales, region_mask=None, gather=...)``: gathers all of
  them in the same rank order, then symmetric CE on S (rows images, columns texts). Each rank's texts are padded to
  its own batch's longest, so under real ranks ``words`` are first zero-padded to the longest over ranks
  (:func:`pad_to_longest_across_ranks`): the padded words lie beyond ``cap_lens`` and change nothing.
Both losses take a ``gather`` callable so that a multi-rank run can be simulated in a single process (tests).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.distributed as dist
from torch.nn import functional as F

Gather = Callable[[torch.Tensor], torch.Tensor]


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    if _world_size() == 1:
        return x
    import torch.distributed.nn.functional as dist_fn

    return torch.cat(dist_fn.all_gather(x), dim=0)


def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    world = _world_size()
    if world == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


def pad_to_longest_across_ranks(x: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Zero-pad ``x`` along ``dim`` to the largest size of that dim over all ranks (identity on one rank).

    all_gather needs the same shape on every rank; word features have each rank's own text length.
    """
    if _world_size() == 1:
        return x
    size = torch.tensor([x.shape[dim]], device=x.device)
    dist.all_reduce(size, op=dist.ReduceOp.MAX)
    missing = int(size.item()) - x.shape[dim]
    if missing == 0:
        return x
    pad = [0, 0] * (x.dim() - 1 - dim) + [0, missing]  # F.pad lists the last dim first
    return F.pad(x, pad)


def _symmetric_ce(logits: torch.Tensor) -> torch.Tensor:
    labels = torch.arange(logits.shape[0], device=logits.device)
    logits = logits.float()
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))


def global_contrastive_loss(img: torch.Tensor, txt: torch.Tensor, logit_scale: torch.Tensor,
                            gather: Gather = gather_with_grad) -> torch.Tensor:
    all_img, all_txt = gather(img), gather(txt)
    return _symmetric_ce(logit_scale.exp() * all_img.float() @ all_txt.float().t())


def caption_lengths(attention_mask: torch.Tensor) -> torch.Tensor:
    return attention_mask.long().sum(dim=1) - 1


def local_similarity(regions: torch.Tensor, words: torch.Tensor, cap_lens: torch.Tensor, t1: torch.Tensor,
                     t2: torch.Tensor, t3: torch.Tensor, region_mask: torch.Tensor | None = None) -> torch.Tensor:
    regions, words = regions.float(), words.float()
    n_words = words.shape[1]
    word_ok = torch.arange(n_words, device=words.device)[None, :] < cap_lens[:, None]  # (Bt, W)
    dots = torch.einsum("bkd,iwd->bikw", regions, words)  # (Bi, Bt, K, W)
    # fill value from each tensor's own dtype: under fp16 autocast a float32 minimum would become -inf
    attn = dots.masked_fill(~word_ok[None, :, None, :], torch.finfo(dots.dtype).min).softmax(dim=-1)  # over words
    attn = t1 * attn
    if region_mask is not None:
        attn = attn.masked_fill(~region_mask.bool()[:, None, :, None], torch.finfo(attn.dtype).min)
    alpha = attn.softmax(dim=2)  # over regions
    context = torch.einsum("bikw,bkd->biwd", alpha, regions)  # (Bi, Bt, W, P)
    cos = t2 * F.cosine_similarity(words[None], context, dim=-1, eps=1e-8)  # (Bi, Bt, W)
    cos = cos.masked_fill(~word_ok[None], torch.finfo(cos.dtype).min)
    return t3 * torch.logsumexp(cos, dim=-1)


def local_contrastive_loss(regions: torch.Tensor, words: torch.Tensor, cap_lens: torch.Tensor,
                           log_scales: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                           region_mask: torch.Tensor | None = None, gather: Gather = gather_with_grad,
                           gather_side: Gather | None = None) -> torch.Tensor:
    if gather is gather_with_grad:
        words = pad_to_longest_across_ranks(words, dim=1)
    gather_side = gather_side or (gather_no_grad if gather is gather_with_grad else gather)
    all_regions, all_words = gather(regions), gather(words)
    all_lens = gather_side(cap_lens)
    all_rmask = gather_side(region_mask) if region_mask is not None else None
    t1, t2, t3 = (s.exp() for s in log_scales)
    return _symmetric_ce(local_similarity(all_regions, all_words, all_lens, t1, t2, t3, all_rmask))
