"""ALTA: adapter alignment of the MRM encoder with CXR-BERT (docs/method.md §2).

Contract (shapes: S = encoder input size, K = visible patches per view, P = projection size):
- ``ALTA(cfg, options, text_encoder, special_ids)``; state-dict keys are docs/method.md §5.2.
- ``forward(cf_target (B,3,2S,2S), views (B,4,3,S,S) [cf,cl,pf,pl], present (B,4) bool, ids (B,T),
  attention_mask (B,T), generator=None)`` -> ``dict(loss, loss_global, loss_local, loss_mim, loss_mlm,
  [loss_global_cf,] logit_scale)`` where ``logit_scale`` is the current s = exp(logit_scale), detached, and
  ``loss_global_cf`` is present with ``options.inference_view_loss``; the cf view is made inside from
  ``cf_target`` (bicubic, antialias), ``views[:, 0]`` is ignored.
- ``forward_encoder(x (B,4,3,S,S), present, generator)`` -> ``(cls (B,4,D), patches (B,4,K,D), mask (B,4,L),
  ids_restore (B,4,L))``: every view masked independently, missing views replaced by ``missing_token``.
- ``encode_image(x (B,3,S,S)) -> (B,P)`` L2-normalised (§2.10: all tokens, current + frontal embeddings; the
  [CLS] output, or the patch mean with ``options.image_pooling='patch_mean'``).
- ``encode_text(ids, attention_mask, normalize=True) -> (B,P)`` from ``cls_projection_head(h_[CLS])`` (or of the
  attended-token mean with ``options.text_pooling='token_mean'``).
  Both encoders run in whatever train/eval mode the model is in: callers use ``model.eval()`` for inference
  (the text encoder has dropout 0.25).
- ``clamp_logit_scales()``: after every optimiser step, clamp the four log temperatures to [0, ln 100].
- ``trainable_names()``: parameter names trained per §2.3, built from an explicit module-path list
  (``trainable_module_paths``); ``build_alta`` asserts it equals the reference substring rule plus the documented
  differences (``reference_trainable_names`` / ``documented_differences``).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .adapters import ProjectionHead, init_adapter, init_reference
from .losses import caption_lengths, global_contrastive_loss, local_contrastive_loss
from .mae_decoder import MAEDecoderMixin
from .presets import AltaOptions, ModelConfig
from .text import CXRBertEncoder, masked_lm_loss, masked_mean, mlm_mask
from .vit import ViTEncoderMixin, random_masking

# view order [cf, cl, pf, pl]
VIEW_INDEX = (0, 1, 0, 1)  # 0 = frontal, 1 = lateral
TIME_INDEX = (0, 0, 1, 1)  # 0 = current, 1 = prior
LOGIT_SCALE_MAX = math.log(100.0)

# the reference rule: trainable iff the full name contains one of these (docs/method.md §2.3)
REFERENCE_TRAINABLE_SUBSTRINGS = (
    "head", "norm", "Norm", "adapter", "Adapter", "logit_scale", "cls_token", "temporal_embedding",
    "view_embedding", "decoder_embed", "bert_encoder.cls.predictions", "mask_token", "decoder_pred",
)


class ALTA(ViTEncoderMixin, MAEDecoderMixin, nn.Module):
    def __init__(self, cfg: ModelConfig, options: AltaOptions, text_encoder: CXRBertEncoder,
                 special_ids: dict[str, int]) -> None:
        nn.Module.__init__(self)
        self.cfg, self.options = cfg, options
        self.special_ids = dict(special_ids)
        d = cfg.embed_dim
        self.build_encoder(cfg, adapters=True)
        mt_dtype = torch.float16 if options.missing_token_dtype == "float16" else None
        self.missing_token = nn.Parameter(torch.zeros(1, cfg.num_patches, d, dtype=mt_dtype))
        self.temporal_embedding = nn.Parameter(torch.zeros(1, 2, d))
        self.view_embedding = nn.Parameter(torch.zeros(1, 2, d))
        self.bert_embed = nn.Linear(d, text_encoder.config.hidden_size)
        self.build_decoder(cfg)
        # patch_grid: the global head reads the whole grid of patch outputs (N x D), not one D-vector
        self.projection_head = ProjectionHead(d * cfg.num_patches if options.image_pooling == "patch_grid" else d,
                                              cfg.proj_dim)
        self.local_projection_head = ProjectionHead(d, cfg.proj_dim)
        init = math.log(1 / 0.07)
        self.logit_scale = nn.Parameter(torch.tensor(init))
        self.logit_scale_local1 = nn.Parameter(torch.tensor(init))
        self.logit_scale_local2 = nn.Parameter(torch.tensor(init))
        self.logit_scale_local3 = nn.Parameter(torch.tensor(init))
        self.initialize_weights()
        self.bert_encoder = text_encoder  # added after the reference init: its weights come from HF / its builder
        self.text_vocab_size = text_encoder.config.vocab_size

    def initialize_weights(self) -> None:
        with torch.no_grad():
            self.apply(init_reference)
            self.init_encoder_special(self.options.pos_embed_construction)
            self.init_decoder_special(self.options.pos_embed_construction)
            for blk in self.blocks:
                init_adapter(blk.attn_adapter, "zero")
                init_adapter(blk.mlp_adapter, "zero")

    # ----------------------------------------------------------------- trainable set (docs/method.md §2.3)
    def trainable_module_paths(self) -> list[str]:
        paths = ["norm", "cls_token", "temporal_embedding", "view_embedding", "projection_head",
                 "local_projection_head", "logit_scale", "logit_scale_local1", "logit_scale_local2",
                 "logit_scale_local3", "decoder_embed", "mask_token", "decoder_pred", "decoder_norm"]
        for i in range(len(self.blocks)):
            paths += [f"blocks.{i}.norm1", f"blocks.{i}.norm2", f"blocks.{i}.attn_adapter", f"blocks.{i}.mlp_adapter"]
        for i in range(len(self.decoder_blocks)):
            if self.options.train_full_decoder:
                paths.append(f"decoder_blocks.{i}")
            else:
                paths += [f"decoder_blocks.{i}.norm1", f"decoder_blocks.{i}.norm2"]
        if self.options.bert_embed_trainable:
            paths.append("bert_embed")
        if self.options.learned_missing_token:
            paths.append("missing_token")
        t = "bert_encoder."
        paths += [t + "bert.embeddings.LayerNorm", t + "cls.predictions.transform", t + "cls.predictions.bias",
                  t + "cls_projection_head", t + "local_projection_head"]
        for i in range(len(self.bert_encoder.bert.encoder.layer)):
            layer = f"{t}bert.encoder.layer.{i}."
            paths += [layer + "attention.output.LayerNorm", layer + "output.LayerNorm",
                      layer + "attn_adapter", layer + "mlp_adapter"]
        return paths

    def trainable_names(self) -> set[str]:
        paths = self.trainable_module_paths()
        names = {n for n, _ in self.named_parameters()}
        out = {n for n in names if any(n == p or n.startswith(p + ".") for p in paths)}
        missing = [p for p in paths if not any(n == p or n.startswith(p + ".") for n in names)]
        if missing:
            raise RuntimeError(f"trainable module paths match no parameter: {missing}")
        return out

    def reference_trainable_names(self) -> set[str]:
        return {n for n, _ in self.named_parameters() if any(s in n for s in REFERENCE_TRAINABLE_SUBSTRINGS)}

    def documented_differences(self) -> tuple[set[str], set[str]]:
        """(added, removed) relative to the reference rule: §3 #2 bert_embed, §3 #3 missing_token, §5.5 decoder."""
        names = {n for n, _ in self.named_parameters()}
        added: set[str] = set()
        if self.options.bert_embed_trainable:
            added |= {n for n in names if n.startswith("bert_embed.")}
        if self.options.learned_missing_token:
            added.add("missing_token")
        if self.options.train_full_decoder:
            added |= {n for n in names if n.startswith("decoder_blocks.")} - self.reference_trainable_names()
        return added, set()

    def apply_trainable(self) -> None:
        names = self.trainable_names()
        added, removed = self.documented_differences()
        expected = (self.reference_trainable_names() | added) - removed
        if names != expected:
            raise AssertionError(
                f"explicit trainable set differs from the spec: extra {sorted(names - expected)[:10]}, "
                f"missing {sorted(expected - names)[:10]}"
            )
        for n, p in self.named_parameters():
            p.requires_grad_(n in names)

    def no_weight_decay(self) -> set[str]:
        return {"cls_token", "temporal_embedding", "view_embedding"}

    @torch.no_grad()
    def clamp_logit_scales(self) -> None:
        for p in (self.logit_scale, self.logit_scale_local1, self.logit_scale_local2, self.logit_scale_local3):
            p.clamp_(0.0, LOGIT_SCALE_MAX)

    # ----------------------------------------------------------------- image side
    def _view_time_embedding(self) -> torch.Tensor:
        view = torch.tensor(VIEW_INDEX, device=self.view_embedding.device)
        time = torch.tensor(TIME_INDEX, device=self.view_embedding.device)
        return self.view_embedding[0, view] + self.temporal_embedding[0, time]  # (4, D)

    def forward_encoder(self, x: torch.Tensor, present: torch.Tensor, generator: torch.Generator | None = None):
        b, v = x.shape[:2]
        if v != 4:
            raise ValueError(f"expected 4 views [cf, cl, pf, pl], got {v}")
        tok = self.embed_patches(x.flatten(0, 1))
        tok = torch.where(present.reshape(-1, 1, 1), tok, self.missing_token.to(tok.dtype))
        tok = tok + self.pos_embed[:, 1:]
        tok, mask, ids_restore = random_masking(tok, self.cfg.mask_ratio, generator)
        tok = self.add_cls(tok)
        n, d = tok.shape[1:]
        tok = tok.view(b, 4, n, d) + self._view_time_embedding()[None, :, None, :].to(tok.dtype)
        h = self.run_blocks(tok.flatten(0, 1)).view(b, 4, n, d)
        length = mask.shape[1]
        return h[:, :, 0], h[:, :, 1:], mask.view(b, 4, length), ids_restore.view(b, 4, length)

    def view_feature(self, cls: torch.Tensor, patches: torch.Tensor,
                     ids_restore: torch.Tensor | None = None) -> torch.Tensor:
        """Per-view global feature: the [CLS] output (..., D), or the mean of the view's visible patch outputs
        with ``image_pooling='patch_mean'``, or with ``patch_grid`` the patch outputs in grid order, flattened
        (..., N*D): masked cells are zero and the visible ones are scaled by N/K (as dropout is), so that a masked
        training view and the unmasked inference view have the same expected feature. ``ids_restore`` (..., N)
        places the K <= N patches (in random_masking's shuffled order); without it ``patches`` is the grid in order."""
        if self.options.image_pooling == "cls":
            return cls
        if self.options.image_pooling == "patch_mean":
            return patches.mean(dim=-2)
        k, n = patches.shape[-2], self.cfg.num_patches
        if ids_restore is not None:
            keep = ids_restore.argsort(dim=-1)[..., :k]  # grid cell of each visible patch (random_masking order)
            grid = patches.new_zeros(*patches.shape[:-2], n, patches.shape[-1])
            patches = grid.scatter(-2, keep.unsqueeze(-1).expand_as(patches), patches) * (n / k)
        return patches.flatten(-2)

    def pool_views(self, feat: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """(B,4,D) per-view features -> (B,D) c̄: the mean over all four views (§2.6), or over the present ones
        with ``exclude_missing_views``."""
        return masked_mean(feat, present) if self.options.exclude_missing_views else feat.mean(dim=1)

    @torch.no_grad()
    def _check_inputs(self, cf_target, views, present) -> None:
        s, t = self.cfg.img_size, self.cfg.target_size
        if cf_target.shape[1:] != (3, t, t):
            raise ValueError(f"cf_target must be (B,3,{t},{t}), got {tuple(cf_target.shape)}")
        if views.shape[1:] != (4, 3, s, s):
            raise ValueError(f"views must be (B,4,3,{s},{s}), got {tuple(views.shape)}")
        if present.shape != (views.shape[0], 4):
            raise ValueError(f"present must be (B,4), got {tuple(present.shape)}")

    def forward(self, cf_target: torch.Tensor, views: torch.Tensor, present: torch.Tensor, ids: torch.Tensor,
                attention_mask: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        self._check_inputs(cf_target, views, present)
        b, s = views.shape[0], self.cfg.img_size
        present = present.bool().clone()
        present[:, 0] = True  # cf is always present (it is the reconstruction target)
        cf = F.interpolate(cf_target, size=(s, s), mode="bicubic", align_corners=False, antialias=True)
        x = torch.cat([cf.unsqueeze(1).to(views.dtype), views[:, 1:]], dim=1)
        cls, patches, mask, ids_restore = self.forward_encoder(x, present, generator)

        cbar = self.pool_views(self.view_feature(cls, patches, ids_restore), present)
        img_global = F.normalize(self.projection_head(cbar), dim=-1)
        regions = self.local_projection_head(patches.flatten(1, 2))  # (B, 4K, P)
        region_mask = None
        if self.options.exclude_missing_views:
            region_mask = present.repeat_interleave(patches.shape[2], dim=1)

        masked_ids, labels = mlm_mask(ids, attention_mask, self.special_ids, self.text_vocab_size,
                                      self.options.mlm_probability, self.options.mlm_replace, generator)
        # the MLM conditioning is one D-vector (§2.5): under patch_grid the pooled patch mean stands in for c̄
        z = self.bert_embed(self.pool_views(patches.mean(dim=-2), present) if self.options.image_pooling ==
                            "patch_grid" else cbar)
        cond = torch.cat([torch.zeros_like(z), z], dim=0)  # clean half: no image conditioning
        hidden = self.bert_encoder(torch.cat([ids, masked_ids]), torch.cat([attention_mask, attention_mask]), cond)
        clean, corrupted = hidden[:b], hidden[b:]
        txt_global = F.normalize(self.bert_encoder.cls_projection_head(self.text_feature(clean, attention_mask)), dim=-1)
        words = self.bert_encoder.local_projection_head(clean[:, 1:])

        loss_global = global_contrastive_loss(img_global, txt_global, self.logit_scale)
        loss_local = local_contrastive_loss(
            regions, words, caption_lengths(attention_mask),
            (self.logit_scale_local1, self.logit_scale_local2, self.logit_scale_local3), region_mask,
        )
        latent = torch.cat([cls[:, :1], patches[:, 0]], dim=1)  # [CLS_cf ; P_cf]
        pred = self.forward_decoder(latent, ids_restore[:, 0])
        loss_mim = self.mim_loss(cf_target, pred, mask[:, 0])
        sel = labels != -100  # the MLM head only needs the selected positions (same mean CE)
        loss_mlm = masked_lm_loss(self.bert_encoder.mlm_logits(corrupted[sel]), labels[sel])
        loss = loss_global + loss_local + loss_mim + loss_mlm
        out = dict(loss_global=loss_global, loss_local=loss_local, loss_mim=loss_mim, loss_mlm=loss_mlm)
        if self.options.inference_view_loss:
            # The §2.10 embedding (unmasked current frontal) is trained directly; see AltaOptions.
            img_cf = self.encode_image(cf.to(views.dtype))
            out["loss_global_cf"] = global_contrastive_loss(img_cf, txt_global, self.logit_scale)
            loss = loss + out["loss_global_cf"]
        return dict(loss=loss, **out, logit_scale=self.logit_scale.detach().exp())

    # ----------------------------------------------------------------- inference (docs/method.md §2.10)
    def inference_states(self, x: torch.Tensor) -> torch.Tensor:
        """(B,3,S,S) -> (B,1+N,D): steps 2-4 of §2.10 (no masking, current + frontal embeddings, final LN)."""
        tok = self.embed_patches(x) + self.pos_embed[:, 1:]
        tok = self.add_cls(tok) + (self.temporal_embedding[:, :1] + self.view_embedding[:, :1]).to(tok.dtype)
        return self.run_blocks(tok)

    def image_feature(self, x: torch.Tensor) -> torch.Tensor:
        """(B,3,S,S) -> (B,D): what the global head embeds at inference: the [CLS] output (§2.10) or, with
        ``image_pooling='patch_mean'``, the mean of all patch outputs."""
        h = self.inference_states(x)
        return self.view_feature(h[:, 0], h[:, 1:])

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.projection_head(self.image_feature(x)), dim=-1)

    def text_feature(self, h: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B,L,D) text states -> (B,D): h_[CLS] (§2.10) or, with ``text_pooling='token_mean'``, the mean over the
        attended tokens."""
        return h[:, 0] if self.options.text_pooling == "cls" else masked_mean(h, attention_mask)

    def encode_text(self, ids: torch.Tensor, attention_mask: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        h = self.bert_encoder(ids, attention_mask)
        t = self.bert_encoder.cls_projection_head(self.text_feature(h, attention_mask))
        return F.normalize(t, dim=-1) if normalize else t

    # ----------------------------------------------------------------- MRM.pth (docs/method.md §5.5)
    def mrm_state_dict(self) -> dict[str, torch.Tensor]:
        """The entries of this model that an MRM checkpoint shares (encoder without adapters, MAE decoder)."""
        from .checkpoints import mrm_shared_keys

        keys = mrm_shared_keys(self)
        return {k: v for k, v in self.state_dict().items() if k in keys}

    def load_mrm_encoder(self, state_dict: dict[str, torch.Tensor]) -> dict[str, list[str]]:
        from .checkpoints import load_mrm_into_alta

        return load_mrm_into_alta(self, state_dict)
