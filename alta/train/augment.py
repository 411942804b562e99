"""Batched image augmentation on the training device (docs/method.md §1.2, §2.9, §2.10).

The loader delivers undecoded uint8 views (the central crop of the stored 512-short-side image, see alta.train.loader);
everything that costs arithmetic happens here on whole batches, on the GPU when there is one:

* ALTA train (:class:`AltaTrainAugment`): cf -> 2S (reconstruction target) and S; cl/pf/pl -> S
  (bicubic, antialias). Then per sample RandomAffine(degrees 20, shear 10, translate (0.1, 0.1),
  scale (0.95, 1.05)) and ColorJitter(brightness 0.8-1.2, contrast 0.8-1.2, random order) with parameters drawn
  ONCE per (cf, pf) pair and once per (cl, pl) pair and applied to both members; grayscale -> 3 channels;
  Normalize(0.4785, 0.2834). Affine translation is relative to the image size and works in normalised
  coordinates, so cf at 2S and its S copy see the same geometry.
* MRM train (:class:`MrmTrainAugment`): RandomResizedCrop(2S, scale (0.2, 1), ratio (3/4, 4/3), bicubic,
  antialias) + horizontal flip, Normalize(0.4978, 0.2449).
* Inference (:func:`eval_transform`): Resize(S*256/224, bicubic, antialias) -> CenterCrop(S) -> Normalize.

All random parameters are drawn on the CPU from a seeded ``torch.Generator`` (so the stream does not depend on the
device) and then moved to the device.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from alta.recipes import ALTA_MEAN, ALTA_STD, MRM_MEAN, MRM_STD  # one definition (docs/method.md §1.2, §2.9)


def _uniform(n: int, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64)


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Square (N,1,H,W) float -> (N,1,size,size), bicubic with antialias, clamped to [0,1] like an 8-bit image."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False).clamp_(0, 1)


def sample_affine(n: int, g: torch.Generator, degrees: float = 20.0, translate: tuple[float, float] = (0.1, 0.1),
                  scale: tuple[float, float] = (0.95, 1.05), shear: float = 10.0) -> torch.Tensor:
    """Draw ``n`` RandomAffine parameter sets -> (n, 2, 3) matrices for ``F.affine_grid`` (output -> input).

    Forward map in normalised coordinates (image centre at 0): x_out = T + R(angle) Sh(shear_x) s x_in,
    the torchvision composition; translation t ~ U(-0.1, 0.1) of the size is 2t in [-1, 1] coordinates.
    """
    angle = torch.deg2rad(_uniform(n, -degrees, degrees, g))
    tx = 2 * _uniform(n, -translate[0], translate[0], g)
    ty = 2 * _uniform(n, -translate[1], translate[1], g)
    s = _uniform(n, scale[0], scale[1], g)
    sh = torch.deg2rad(_uniform(n, -shear, shear, g))
    cos, sin = torch.cos(angle), torch.sin(angle)
    # R(angle) @ [[1, -tan(sh)], [0, 1]] * s ; image y axis points down, so a positive angle turns counter-clockwise
    m = torch.empty(n, 2, 2, dtype=torch.float64)
    m[:, 0, 0], m[:, 0, 1] = cos, -cos * torch.tan(sh) + sin
    m[:, 1, 0], m[:, 1, 1] = -sin, sin * torch.tan(sh) + cos
    m = m * s[:, None, None]
    inv = torch.linalg.inv(m)
    t = torch.stack([tx, ty], 1)
    theta = torch.cat([inv, -(inv @ t[:, :, None])], 2)
    return theta.float()


def sample_jitter(n: int, g: torch.Generator, brightness=(0.8, 1.2), contrast=(0.8, 1.2)) -> torch.Tensor:
    """(n, 3): brightness factor, contrast factor, order flag (1 = contrast first), as ColorJitter draws them."""
    b = _uniform(n, *brightness, g)
    c = _uniform(n, *contrast, g)
    order = (torch.rand(n, generator=g, dtype=torch.float64) < 0.5).double()
    return torch.stack([b, c, order], 1).float()


def apply_affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Warp (N,1,H,W) images with per-sample matrices; outside pixels are 0 (torchvision's default fill)."""
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def apply_jitter(x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Brightness (x*b) and contrast (blend with the image mean) on grey images in [0,1], in the drawn order."""
    p = params.to(x.device, x.dtype)
    b, c, contrast_first = p[:, 0, None, None, None], p[:, 1, None, None, None], p[:, 2, None, None, None] > 0.5

    def bright(y):
        return (y * b).clamp(0, 1)

    def contr(y):
        mean = y.mean(dim=(1, 2, 3), keepdim=True)
        return (c * y + (1 - c) * mean).clamp(0, 1)

    return torch.where(contrast_first, bright(contr(x)), contr(bright(x)))


def to_model_input(x: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """(N,1,H,W) in [0,1] -> (N,3,H,W) normalised (Grayscale(3) + Normalize)."""
    return ((x - mean) / std).expand(-1, 3, -1, -1).contiguous()


class AltaTrainAugment:
    """uint8 views (B,4,H,W) [cf, cl, pf, pl] + present (B,4) -> cf_target (B,3,2S,2S), views (B,4,3,S,S)."""

    def __init__(self, img_size: int, target_size: int, generator: torch.Generator,
                 mean: float = ALTA_MEAN, std: float = ALTA_STD, augment: bool = True):
        self.S, self.T, self.g, self.mean, self.std, self.augment = img_size, target_size, generator, mean, std, augment

    def __call__(self, views_u8: torch.Tensor, present: torch.Tensor, device: torch.device | str | None = None):
        device = device or views_u8.device
        x = views_u8.to(device, non_blocking=True).float().div_(255.0)
        B = x.shape[0]
        cf = resize(x[:, 0:1], self.T)                                  # (B,1,2S,2S)
        others = resize(x[:, 1:4].reshape(B * 3, 1, *x.shape[-2:]), self.S).reshape(B, 3, self.S, self.S)
        if self.augment:
            theta = sample_affine(2 * B, self.g)                        # [frontal pair ; lateral pair]
            jit = sample_jitter(2 * B, self.g)
            th_f, th_l, j_f, j_l = theta[:B], theta[B:], jit[:B], jit[B:]
            cf = apply_jitter(apply_affine(cf, th_f), j_f)
            # cl, pf, pl: pf shares the frontal parameters with cf; cl and pl share the lateral ones
            th_o = torch.stack([th_l, th_f, th_l], 1).reshape(3 * B, 2, 3)
            j_o = torch.stack([j_l, j_f, j_l], 1).reshape(3 * B, 3)
            others = apply_jitter(apply_affine(others.reshape(3 * B, 1, self.S, self.S), th_o), j_o)
            others = others.reshape(B, 3, self.S, self.S)
        cf_small = resize(cf, self.S)
        views = torch.cat([cf_small, others], 1).reshape(B * 4, 1, self.S, self.S)
        views = to_model_input(views, self.mean, self.std).reshape(B, 4, 3, self.S, self.S)
        pres = present.to(device).bool()
        views = views * pres[:, :, None, None, None].to(views.dtype)   # absent views: zeros (the model masks them)
        return to_model_input(cf, self.mean, self.std), views, pres


class MrmTrainAugment:
    """uint8 images (B,H,W) -> (B,3,2S,2S): RandomResizedCrop(2S, scale 0.2-1) + horizontal flip + normalise."""

    def __init__(self, target_size: int, generator: torch.Generator, mean: float = MRM_MEAN, std: float = MRM_STD,
                 scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3)):
        self.T, self.g, self.mean, self.std, self.scale, self.ratio = target_size, generator, mean, std, scale, ratio

    def crop_boxes(self, n: int, h: int, w: int) -> list[tuple[int, int, int, int]]:
        """torchvision RandomResizedCrop.get_params, vectorised draw with its 10-try rejection and fallback."""
        area = h * w
        log_r = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        out = []
        for _ in range(n):
            u = torch.rand(10, 4, generator=self.g, dtype=torch.float64)
            box = None
            for t in range(10):
                target = area * (self.scale[0] + (self.scale[1] - self.scale[0]) * u[t, 0].item())
                ar = math.exp(log_r[0] + (log_r[1] - log_r[0]) * u[t, 1].item())
                cw, ch = int(round(math.sqrt(target * ar))), int(round(math.sqrt(target / ar)))
                if 0 < cw <= w and 0 < ch <= h:
                    box = (int(u[t, 2].item() * (h - ch + 1)), int(u[t, 3].item() * (w - cw + 1)), ch, cw)
                    break
            if box is None:  # central crop at the clamped aspect ratio
                r = w / h
                cw, ch = (w, int(round(w / self.ratio[1]))) if r > self.ratio[1] else \
                    ((int(round(h * self.ratio[0])), h) if r < self.ratio[0] else (w, h))
                box = ((h - ch) // 2, (w - cw) // 2, ch, cw)
            out.append(box)
        return out

    def __call__(self, imgs_u8: torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
        device = device or imgs_u8.device
        x = imgs_u8.to(device, non_blocking=True)
        B, H, W = x.shape
        boxes = self.crop_boxes(B, H, W)
        flips = (torch.rand(B, generator=self.g) < 0.5).tolist()
        out = torch.empty(B, 1, self.T, self.T, device=device)
        for i, (top, left, ch, cw) in enumerate(boxes):
            crop = x[i, top:top + ch, left:left + cw].float().div_(255.0)[None, None]
            r = F.interpolate(crop, size=(self.T, self.T), mode="bicubic", antialias=True, align_corners=False)
            out[i] = r[0].flip(-1) if flips[i] else r[0]
        return to_model_input(out.clamp_(0, 1), self.mean, self.std)


def eval_transform(img: torch.Tensor, img_size: int, mean: float = ALTA_MEAN, std: float = ALTA_STD) -> torch.Tensor:
    """Inference preprocessing of one grey image (H,W) uint8 or [0,1] float -> (3,S,S).

    Resize(shorter side -> S*256/224, bicubic, antialias) then CenterCrop(S): Resize(256)+CenterCrop(224) at the
    vit_base preset, scaled for smaller presets.
    """
    x = img.float() / 255.0 if img.dtype == torch.uint8 else img.float()
    h, w = x.shape[-2:]
    short = int(round(img_size * 256 / 224))
    nh, nw = (short, max(short, int(short * w / h))) if h <= w else (max(short, int(short * h / w)), short)
    x = F.interpolate(x.reshape(1, 1, h, w), size=(nh, nw), mode="bicubic", antialias=True,
                      align_corners=False).clamp_(0, 1)
    top, left = int(round((nh - img_size) / 2.0)), int(round((nw - img_size) / 2.0))
    x = x[:, :, top:top + img_size, left:left + img_size]
    return to_model_input(x, mean, std)[0]
