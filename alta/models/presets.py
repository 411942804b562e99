"""Model geometry presets and the `faithful` / `recommended` switches (docs/method.md §1.1, §2, §3).

Contract:
- ``ModelConfig``: every size of the MRM and ALTA models. ``PRESETS['vit_base']`` is the paper (docs/method.md §1.1, §2.2);
  ``PRESETS['tiny']`` is a CPU-sized model with the same structure for the demo and the tests.
- ``AltaOptions``: every behaviour switch of docs/method.md §3, with defaults per mode (``faithful`` reproduces the
  reference code, ``recommended`` applies the fixes).
- ``resolve_config(preset, overrides)`` / ``resolve_options(mode, overrides)`` build them from the config file
  section ``model: {preset: tiny, overrides: {...}, mode: recommended, options: {...}}``; unknown keys are an error.

Invariant kept for every preset: the MIM target is the cf image at twice the encoder input size, cut into patches of
twice the encoder patch size, so both grids have the same (img_size / patch_size)^2 cells and ``decoder_pred``
outputs (2*patch_size)^2 * 3 values per patch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

MODES = ("faithful", "recommended")


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of every model part. Fields prefixed ``text_`` describe the ALTA text encoder (CXR-BERT), fields
    prefixed ``report_`` the MRM report decoder; ``None`` vocab sizes are filled from the tokenizer at build time."""

    img_size: int = 224  # encoder input S; the MIM target is 2S
    patch_size: int = 16
    in_chans: int = 3
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    norm_eps: float = 1e-6
    decoder_embed_dim: int = 768
    decoder_depth: int = 4
    decoder_num_heads: int = 6
    adapter_ratio: float = 0.25  # bottleneck 768 -> 192
    adapter_scale: float = 0.5  # s of the parallel MLP adapter
    proj_dim: int = 128  # image heads and text projection size
    mask_ratio: float = 0.75
    norm_pix_loss: bool = True
    # ALTA text encoder (CXR-BERT-specialized geometry)
    text_vocab_size: int | None = 30522
    text_hidden: int = 768
    text_layers: int = 12
    text_heads: int = 12
    text_intermediate: int = 3072
    text_max_positions: int = 512
    text_dropout: float = 0.25
    text_ln_eps: float = 1e-12
    text_init_std: float = 0.02  # std of a randomly initialised text backbone (only without a CXR-BERT directory)
    # MRM report decoder
    report_vocab_size: int | None = 30000
    report_hidden: int = 384
    report_layers: int = 6
    report_heads: int = 6
    report_intermediate: int = 1536
    report_max_positions: int = 100
    report_dropout: float = 0.1
    report_mask_prob: float = 0.5

    def __post_init__(self) -> None:
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")
        for dim, heads, what in [
            (self.embed_dim, self.num_heads, "embed_dim/num_heads"),
            (self.decoder_embed_dim, self.decoder_num_heads, "decoder_embed_dim/decoder_num_heads"),
            (self.text_hidden, self.text_heads, "text_hidden/text_heads"),
            (self.report_hidden, self.report_heads, "report_hidden/report_heads"),
        ]:
            if dim % heads:
                raise ValueError(f"{what}: {dim} is not divisible by {heads}")
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {self.mask_ratio}")

    @property
    def grid(self) -> int:
        return self.img_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid**2

    @property
    def num_keep(self) -> int:
        """Visible patches per view under masking (49 of 196 for ViT-B/16 at 75%)."""
        return int(self.num_patches * (1 - self.mask_ratio))

    @property
    def target_size(self) -> int:
        return 2 * self.img_size

    @property
    def target_patch(self) -> int:
        return 2 * self.patch_size

    @property
    def adapter_dim(self) -> int:
        return int(self.embed_dim * self.adapter_ratio)

    @property
    def text_adapter_dim(self) -> int:
        return int(self.text_hidden * self.adapter_ratio)


PRESETS: dict[str, ModelConfig] = {
    "vit_base": ModelConfig(),
    # CPU demo/test geometry: 64 px input (128 px cf target), 8x8 = 64 patches of 8 px, 16 visible per view.
    "tiny": ModelConfig(
        img_size=64, patch_size=8, embed_dim=64, depth=4, num_heads=4,
        decoder_embed_dim=64, decoder_depth=2, decoder_num_heads=4, proj_dim=32,
        text_vocab_size=None, text_hidden=64, text_layers=2, text_heads=4, text_intermediate=128,
        text_max_positions=256,  # 256: retrieval texts are cut at 256 (§3 #17)
        # No dropout in the tiny text tower: it is a random, frozen BERT (no pretrained CXR-BERT offline), and
        # dropout noise on its weak [CLS] signal stopped the global contrastive loss from learning at all.
        text_dropout=0.0,
        # A random frozen BERT at std 0.02 gives near-constant [CLS] outputs (pairwise distance ~0.05 at width 64),
        # and the global loss then collapses to ln(B); std 0.3 keeps different reports distinguishable.
        text_init_std=0.3,
        report_vocab_size=None, report_hidden=32, report_layers=2, report_heads=4, report_intermediate=64,
        report_max_positions=100,
    ),
}


@dataclass(frozen=True)
class AltaOptions:
    """Behaviour switches (docs/method.md §3). Each field is a config key ``model.options.<name>`` and is logged.

    - ``bert_embed_trainable``: §3 #2. The image -> MLM conditioning Linear is trained (recommended) or stays at its
      seeded xavier init (faithful).
    - ``missing_token_dtype``: §3 #3. ``float16`` stores ``missing_token`` in fp16 as the reference file does (we
      cast it at use instead of crashing); ``model`` stores it in the model dtype.
    - ``learned_missing_token``: §3 #3 option; makes ``missing_token`` trainable (+150,528 at vit_base).
    - ``exclude_missing_views``: §2.6 ablation; absent views are left out of the CLS mean and the region softmax.
    - ``text_adapter_init``: §3 #4. ``zero`` zeroes text D_fc2 after loading the HF weights (step 0 = CXR-BERT);
      ``normal`` gives both text adapter linears N(0, 0.02) weights and zero biases.
    - ``mlm_probability`` / ``mlm_replace``: §2.5 and §3 #5; per-token selection probability and the
      (mask, random, keep) fractions of selected tokens.
    - ``mrm_text_loss_positions``: §3 #6. ``all`` (CE over every position, pads included) or ``masked``.
    - ``mrm_antialias``: §1.2. Antialiasing of the 2S -> S bicubic resize inside MRM (ALTA always uses it).
    - ``exempt_embeddings_from_decay``: §3 #8. No weight decay on cls_token / temporal / view embeddings.
    - ``train_full_decoder``: §5.5 escape hatch; the whole MAE decoder is trained, allowed when MRM.pth has no
      decoder weights.
    - ``pos_embed_construction``: §1.1, §5.5. How the fixed sin-cos tables that are not loaded from a file are
      built: ``mae`` (MAE's frequencies) or ``official`` (the official code's ``omega / D / 2.``, faithful). Loaded
      tables are always kept as the file has them.

    Small-scale switches, not in the paper (off in both modes; the demo's config.yaml turns them on;
    docs/results.md §1 has the measurements). ALTA trains its global loss on the mean [CLS] of four 75 %-masked
    views but embeds one unmasked current frontal at inference (§2.10), which assumes the two agree; on the demo's
    few hundred studies with a tiny encoder they do not, and a tiny MRM's [CLS] (and a tiny text stand-in's [CLS])
    carries almost nothing that distinguishes one image (report) from another.

    - ``inference_view_loss``: a second global InfoNCE term, ``loss_global_cf``, on the §2.10 embedding of the
      unmasked current frontal (the image inference embeds), next to the masked four-view one. One more encoder
      pass over the current frontal per sample; no new parameters.
    - ``image_pooling``: ``cls`` (method) or ``patch_mean``: the per-view global feature is the mean of the view's
      patch outputs (its visible ones in training, all at inference) instead of the [CLS] output. MRM conditions
      the report decoder on exactly this mean (§1.1), so it is the feature MRM trains. Or ``patch_grid``: the
      view's patch outputs in grid order, flattened (N*D; masked cells zero, visible ones scaled by N/K), so that
      the global head sees where a finding is, which a mean over the grid loses; the head's input grows to N*D
      (a demo-scale option). The MLM conditioning stays one D-vector: the patch mean.
    - ``text_pooling``: ``cls`` (method) or ``token_mean``: the global text feature is the mean of the attended
      token states instead of h_[CLS], in training and at inference.
    """

    bert_embed_trainable: bool = True
    missing_token_dtype: str = "model"
    learned_missing_token: bool = False
    exclude_missing_views: bool = False
    text_adapter_init: str = "zero"
    mlm_probability: float = 0.5
    mlm_replace: tuple[float, float, float] = (1.0, 0.0, 0.0)
    mrm_text_loss_positions: str = "masked"
    mrm_antialias: bool = True
    exempt_embeddings_from_decay: bool = True
    train_full_decoder: bool = False
    pos_embed_construction: str = "mae"
    inference_view_loss: bool = False
    image_pooling: str = "cls"
    text_pooling: str = "cls"
    mode: str = field(default="recommended")

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.missing_token_dtype not in ("float16", "model"):
            raise ValueError(f"missing_token_dtype must be 'float16' or 'model', got {self.missing_token_dtype!r}")
        if self.text_adapter_init not in ("zero", "normal"):
            raise ValueError(f"text_adapter_init must be 'zero' or 'normal', got {self.text_adapter_init!r}")
        if self.mrm_text_loss_positions not in ("all", "masked"):
            raise ValueError(f"mrm_text_loss_positions must be 'all' or 'masked', got {self.mrm_text_loss_positions!r}")
        if self.pos_embed_construction not in ("mae", "official"):
            raise ValueError(f"pos_embed_construction must be 'mae' or 'official', got {self.pos_embed_construction!r}")
        if self.image_pooling not in ("cls", "patch_mean", "patch_grid"):
            raise ValueError(f"image_pooling must be 'cls', 'patch_mean' or 'patch_grid', got {self.image_pooling!r}")
        if self.text_pooling not in ("cls", "token_mean"):
            raise ValueError(f"text_pooling must be 'cls' or 'token_mean', got {self.text_pooling!r}")
        rep = tuple(float(x) for x in self.mlm_replace)
        if len(rep) != 3 or min(rep) < 0 or abs(sum(rep) - 1.0) > 1e-6:
            raise ValueError(f"mlm_replace must be three non-negative fractions summing to 1, got {self.mlm_replace}")
        object.__setattr__(self, "mlm_replace", rep)
        if not 0.0 < self.mlm_probability < 1.0:
            raise ValueError(f"mlm_probability must be in (0, 1), got {self.mlm_probability}")

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["mlm_replace"] = list(d["mlm_replace"])
        return d


_MODE_DEFAULTS: dict[str, dict[str, Any]] = {
    "faithful": dict(
        bert_embed_trainable=False, missing_token_dtype="float16", text_adapter_init="normal",
        mrm_text_loss_positions="all", mrm_antialias=False, exempt_embeddings_from_decay=False,
        pos_embed_construction="official",
    ),
    "recommended": {},
}


def _override(base: Any, overrides: dict[str, Any] | None, what: str) -> Any:
    overrides = dict(overrides or {})
    known = {f.name for f in dataclasses.fields(base)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown {what} key(s) {unknown}; known: {sorted(known)}")
    return dataclasses.replace(base, **overrides)


def resolve_config(preset: str | ModelConfig = "tiny", overrides: dict[str, Any] | None = None) -> ModelConfig:
    """Preset name (or a ready ``ModelConfig``) plus field overrides -> ``ModelConfig``."""
    if isinstance(preset, ModelConfig):
        return _override(preset, overrides, "model.overrides")
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; known: {sorted(PRESETS)}")
    return _override(PRESETS[preset], overrides, "model.overrides")


def resolve_options(mode: str | AltaOptions = "recommended", overrides: dict[str, Any] | None = None) -> AltaOptions:
    """Mode name (or ready ``AltaOptions``) plus per-switch overrides -> ``AltaOptions``."""
    if isinstance(mode, AltaOptions):
        return _override(mode, overrides, "model.options")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return _override(AltaOptions(mode=mode, **_MODE_DEFAULTS[mode]), overrides, "model.options")
