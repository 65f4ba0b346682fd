"""Colorful Image Colorization (Zhang, Isola, Efros, ECCV 2016) as benchmarked by
Goyal et al. 2019; METHODS.md section 3.

§2 The network sees only the lightness L of an image and predicts its colour, the
ab channels of CIE Lab. The backbone is built with one input channel behind
``LChannel`` (``backbone_options``: input "L"), which receives the usual normalised
RGB view and passes it L - 50; evaluation therefore feeds it RGB like any backbone.
§2.1 Colour is predicted as a distribution over Q = 313 in-gamut ab bins (grid
step 10): a 1 x 1 conv maps the backbone's last map to Q logits per position
(METHODS.md 3.5 [A]: the decoder of Goyal's ResNet-50 is not released). The
target ab is average-pooled to that map's resolution and soft-encoded (§2.1,
METHODS.md 3.3): a Gaussian (sigma = 5) over the K nearest bin centres. K is the
problem-complexity axis of Goyal et al. (2, 5, 10, 20, 40, 80, 160, 313; the
released code's 10 by default, the paper's text says 5).
Eq. 2 The loss is a multinomial cross-entropy with these soft targets, each pixel
weighted by v (``selfsup.losses.colorization``).
Eq. 3-4 Class rebalancing: v is w[q*], q* the pixel's dominant (nearest) bin, with
w proportional to ((1 - lam) p + lam / Q)^-1 and E_p[w] = 1, p the empirical
ImageNet prior over the bins, lam = 1/2. Grayscale images get v = 0 (Zhang's
``NonGrayMaskLayer``): no |a| or |b| above 5 anywhere in the view.
Eq. 5 For pictures only, the annealed mean of the predicted distribution
(T = 0.38) gives the ab of every position; upsampled and joined to the image's own
L, it gives the colourised image (``colorize``, ``selfsup viz colorize``).

Choices of this implementation:
- The grayscale mask is decided on the view's full-resolution ab, not on the
  pooled target. Zhang's layer reads his 4x-subsampled target, whose values are
  single pixels; here the target is an average over up to 16 x 16 pixels, which can
  shrink a small coloured region below the threshold of 5. At full resolution the
  decision does not depend on the backbone's output stride.
- Views: a RandomResizedCrop with scale (``scale_min``, 1) and a horizontal flip,
  no colour jitter and no grayscale (the colour is the target). Zhang: 176 px random
  crops of 256 px images with mirroring.
- ResNets keep res5 at stride 1 (``res5_stride``; Goyal's LAYER4_STRIDE 1): output
  stride 16, a 14 x 14 target at 224 px, 8 x 8 at 32 px with the CIFAR stem.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.data.color import ab_bins, annealed_mean, colorful, lab_to_rgb, rebalance_weights, rgb_to_lab, soft_encode
from selfsup.data.views import ViewMaker, ViewSpec, unnormalize
from selfsup.errors import SelfSupError
from selfsup.losses import colorization
from selfsup.methods.base import Method, MethodConfig


@dataclass
class ColorizationConfig(MethodConfig):
    k: int = 10                       # soft-encoding neighbours K (complexity axis: 2 .. 313; NNEncode NN = 10)
    sigma: float = 5.0                # Gaussian of the soft encoding, in ab units
    lam: float = 0.5                  # lambda of eq. 4 (1: no rebalancing effect, uniform weights)
    rebalance: bool = True            # eq. 3-4 class rebalancing; False: every colour pixel weighs 1
    res5_stride: int = 1              # ResNets only: stride of res5 (Goyal's LAYER4_STRIDE 1; 2 as torchvision)
    scale_min: float = 0.25           # RandomResizedCrop scale (scale_min, 1), with flip, no colour changes
    temperature: float = 0.38         # annealed mean of eq. 5 (pictures only)


class Colorization(Method):
    name = "colorization"
    Config = ColorizationConfig
    eval_stages_back = 1    # Goyal et al. 2019 evaluate pretext tasks one stage before the last (res4 of ResNet-50)
    # Zhang's solver is Adam (lr 3e-5, betas (0.9, 0.99), weight decay 1e-3; METHODS.md 3.5), which the
    # engine does not offer (sgd | lars | larc). Goyal's ResNet-50 solver is not in METHODS.md; [A]: the
    # SGD recipe of Goyal's other ResNet-50 pretext (Jigsaw, VISSL): momentum 0.9, lr 0.1 per 256 images,
    # weight decay 1e-4 (none on biases and BN), here with cosine decay.
    defaults = {"optim": {"name": "sgd", "lr": 0.1, "scale_lr": True, "weight_decay": 1e-4, "momentum": 0.9}}

    @classmethod
    def backbone_options(cls, cfg, backbone_name: str) -> dict:
        options = {"input": "L"}
        if backbone_name.startswith("resnet"):
            options["last_stride"] = cfg.res5_stride
        return options

    @classmethod
    def fit_dataset(cls, cfg: ColorizationConfig, dataset) -> ColorizationConfig:
        """Refuse gray images: their ab channels are 0, so every target is the gray bin and the loss is 0."""
        if getattr(dataset, "channels", 3) == 1:
            raise SelfSupError("colorization needs colour images: the ab channels of gray images are 0, so it learns "
                               "nothing (loss 0); use a colour dataset (drop channels=1)")
        return cfg

    def __init__(self, backbone, cfg: ColorizationConfig, image_size: int):
        super().__init__(backbone, cfg, image_size)
        bins = ab_bins()
        if not 1 <= cfg.k <= len(bins):
            raise SelfSupError(f"colorization.k={cfg.k}: the soft encoding needs 1 to {len(bins)} nearest bins")
        if not 0 < cfg.scale_min <= 1:
            raise SelfSupError(f"colorization.scale_min={cfg.scale_min}: use a crop scale in (0, 1]")
        # constants that follow the module to its device, kept out of checkpoints
        self.register_buffer("bins", bins, persistent=False)                                 # Q x 2
        self.register_buffer("class_weights", rebalance_weights(lam=cfg.lam), persistent=False)  # Q, eq. 4
        self.head = nn.Conv2d(backbone.out_dim, len(bins), kernel_size=1)                  # logits over the Q bins

    def view_maker(self):
        spec = ViewSpec(self.image_size, scale=(self.cfg.scale_min, 1.0), flip_prob=0.5, jitter_prob=0.0,
                        gray_prob=0.0, blur_prob=0.0, solarize_prob=0.0)
        return ViewMaker([spec])

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised RGB images -> B x Q x h x w bin logits (float32) on the backbone's last map."""
        return self.head(self.backbone.forward_map(x)).float()

    @torch.no_grad()
    def targets(self, x: torch.Tensor, size) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Soft targets Z (B x Q x h x w), pixel weights v (B x h x w) and the colourful-image mask (B)
        of normalised RGB views, at the logits' resolution ``size`` = (h, w)."""
        c = self.cfg
        with torch.autocast(x.device.type, enabled=False):                                  # Lab in float32
            ab = rgb_to_lab(unnormalize(x))[:, 1:]                                          # B x 2 x H x W
            z = soft_encode(F.adaptive_avg_pool2d(ab, size), c.k, c.sigma, bins=self.bins)  # §2.1
            mask = colorful(ab)                                                             # NonGrayMaskLayer
            v = self.class_weights[z.argmax(1)] if c.rebalance else z.new_ones(z.shape[0], *z.shape[2:])
            v = v * mask[:, None, None].to(v.dtype)                                          # eq. 3, 0 for grayscale
        return z, v, mask

    def forward(self, batch):
        view = batch.views[0]
        logits = self.logits(view)
        z, v, mask = self.targets(view, logits.shape[-2:])
        loss = colorization(logits, z, v)                                                   # eq. 2
        with torch.no_grad():
            hit = (logits.argmax(1) == z.argmax(1)).float()                                 # dominant bin predicted
            keep = mask[:, None, None].expand_as(hit)
            acc = hit[keep].mean() if keep.any() else hit.new_zeros(())
        return {"loss": loss, "bin_acc": acc, "colorful": mask.float().mean()}

    @torch.no_grad()
    def predict_ab(self, x: torch.Tensor, temperature: float | None = None) -> torch.Tensor:
        """Eq. 5: normalised RGB images -> the annealed-mean ab (B x 2 x H x W), upsampled bilinearly
        to the image size."""
        t = self.cfg.temperature if temperature is None else temperature
        probs = torch.softmax(self.logits(x), dim=1)
        ab = annealed_mean(probs, t, bins=self.bins)
        return F.interpolate(ab, size=x.shape[-2:], mode="bilinear", align_corners=False)

    @torch.no_grad()
    def colorize(self, x: torch.Tensor, temperature: float | None = None) -> torch.Tensor:
        """Normalised RGB images -> RGB in [0, 1]: the images' own L with the predicted ab (eq. 5)."""
        lightness = rgb_to_lab(unnormalize(x))[:, :1]
        return lab_to_rgb(torch.cat([lightness, self.predict_ab(x, temperature)], dim=1))
