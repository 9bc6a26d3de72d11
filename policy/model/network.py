"""The trainable LIBERO policy network: observation encoder + cross-attention denoiser.

Observation tokens (computed once per data point, paper Section 6.3):
  * per camera, a FiLM ResNet-18 (language-conditioned) feature map -> (h*w) tokens,
    plus a learned camera embedding;
  * one language token (projected frozen-BERT sentence embedding);
  * one proprio token (MLP of the z-scored joint_states ++ gripper_states);
  * with object tokens (``PolicyConfig.objects``), one token per scene object: an MLP of its
    z-scored pose (position, quaternion, position in the gripper frame) plus the projected
    frozen-language embedding of its name; no position embedding, so the order of the objects
    does not matter, and scenes with fewer objects than the batch's largest are masked;
  * optionally ``encoder_layers`` of self-attention over all of them.
The denoiser (policy/model/denoiser.py) cross-attends to these tokens (``cond``: the token
tensor, or (tokens, mask) when some are padding).

Actions are normalised to [-1, 1] by the Normalizer buffers (saved with the weights).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from policy.model.config import PolicyConfig
from policy.diffusion import Generators, Weighting, diffusion_loss, sample
from policy.model.denoiser import CrossAttentionDenoiser
from policy.model.resnet import FiLMResNetEncoder
from policy.model.normalize import Normalizer
from policy.scoring import LossConfig, ScoreTerms


def images_to_float(images: Tensor, size: int) -> Tensor:
    """(B, 3, H, W) uint8 (or float in [0, 1]) -> (B, 3, size, size) float in [0, 1]."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x


class ObjectTokens(NamedTuple):
    """The objects of a batch: poses (B, N, k) raw, names (B, N, lang_dim) frozen-language
    embeddings of their names, mask (B, N) bool (True = a real object, False = padding)."""

    poses: Tensor
    names: Tensor
    mask: Tensor


Cond = Tensor | tuple[Tensor, Tensor]  # observation tokens (B, N, D), with their (B, N) validity mask when padded


class PolicyNetwork(nn.Module):
    """Everything trainable (and the normalisation statistics) of the LIBERO policy.

    Args:
        cfg: the architecture; lang_dim: size of the frozen language embedding.
    """

    def __init__(self, cfg: PolicyConfig, lang_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        objects = cfg.spec.objects
        self.normalizer = Normalizer(cfg.action_dim, cfg.proprio_dim, objects[0].shape[1] if objects else 0)
        self.cameras = nn.ModuleDict({cam: FiLMResNetEncoder(cfg.resnet_widths, lang_dim, d) for cam in cfg.cameras})
        self.camera_embed = nn.Parameter(torch.randn(len(cfg.cameras), d) * 0.02)
        self.lang_proj = nn.Linear(lang_dim, d)
        self.proprio_proj = nn.Sequential(nn.Linear(cfg.proprio_dim, d), nn.GELU(), nn.Linear(d, d))
        self.token_type = nn.Parameter(torch.randn(2, d) * 0.02)  # language, proprio
        if objects:  # created only with object tokens: the weights of other policies are unchanged
            k = objects[0].shape[1]
            self.object_proj = nn.Sequential(nn.Linear(k, d), nn.GELU(), nn.Linear(d, d))
            self.object_name_proj = nn.Linear(lang_dim, d)
        self.encoder: nn.Module | None = None
        if cfg.encoder_layers > 0:
            layer = nn.TransformerEncoderLayer(
                d, cfg.n_heads, int(d * cfg.mlp_ratio), cfg.dropout, activation="gelu", batch_first=True, norm_first=True
            )
            self.encoder = nn.TransformerEncoder(layer, cfg.encoder_layers, enable_nested_tensor=False)
        self.denoiser = CrossAttentionDenoiser(
            cfg.chunk_size, cfg.action_dim, cfg.noise_dim, cfg.denoiser_dim or d, cfg.n_heads, cfg.decoder_layers,
            cfg.mlp_ratio, cfg.dropout, cond_dim=d,
        )

    @property
    def noise_shape(self) -> tuple[int, int]:
        """Per-sample shape of xi: (chunk_size, noise_dim)."""
        return (self.cfg.chunk_size, self.cfg.noise_dim)

    def encode(self, images: Mapping[str, Tensor], proprio: Tensor, lang: Tensor,
               objects: ObjectTokens | None = None) -> Cond:
        """Observation tokens, once per data point.

        Args:
            images: {camera: (B, 3, H, W) uint8 upright images}.
            proprio: (B, 9) raw joint_states ++ gripper_states (normalised here).
            lang: (B, lang_dim) frozen language embeddings.
            objects: the scene objects (object-token policies only).
        Returns:
            (B, N, d_model) tokens, N = cameras * (image_size/32)^2 + 2 (+ objects); with
            padded objects, (tokens, (B, N) mask of the real ones).
        """
        tokens = []
        for i, (cam, enc) in enumerate(self.cameras.items()):
            if cam not in images:
                raise KeyError(f"observation lacks camera {cam!r}; the policy was built for {list(self.cameras)}")
            tokens.append(enc(images_to_float(images[cam], self.cfg.image_size), lang) + self.camera_embed[i])
        lang_tok = self.lang_proj(lang) + self.token_type[0]
        prop_tok = self.proprio_proj(self.normalizer.normalize_proprio(proprio.float())) + self.token_type[1]
        x = torch.cat([*tokens, lang_tok[:, None], prop_tok[:, None]], dim=1)
        has_objects = hasattr(self, "object_proj")
        if has_objects != (objects is not None):
            raise ValueError("object tokens given to a policy built without them" if objects is not None else
                             "this policy is built with object tokens; the observation lacks the objects")
        if objects is None:
            return self.encoder(x) if self.encoder is not None else x
        obj = self.object_proj(self.normalizer.normalize_objects(objects.poses.float())) + self.object_name_proj(objects.names)
        x = torch.cat([x, obj], dim=1)
        if bool(objects.mask.all()):
            return self.encoder(x) if self.encoder is not None else x
        mask = torch.cat([torch.ones(x.shape[0], x.shape[1] - obj.shape[1], dtype=torch.bool, device=x.device),
                          objects.mask.to(x.device)], dim=1)
        if self.encoder is not None:
            x = self.encoder(x, src_key_padding_mask=~mask)
        return x, mask

    def forward(
        self,
        images: Mapping[str, Tensor],
        proprio: Tensor,
        lang: Tensor,
        actions: Tensor,
        loss: LossConfig,
        time_eps: float = 1e-2,
        weighting: Weighting = "none",
        weight_bias: float = 0.0,
        objects: ObjectTokens | None = None,
    ) -> ScoreTerms:
        """Training loss (paper eq. 14-16) for a batch; actions (B, 8, 7) in env units.

        The encoder runs once per data point; the m population members share its tokens.
        Returns per-sample ScoreTerms of shape (B,).
        """
        cond = self.encode(images, proprio, lang, objects)
        x0 = self.normalizer.normalize_actions(actions.float())
        return diffusion_loss(self.denoiser, x0, cond, loss, self.noise_shape, time_eps, weighting, weight_bias)

    @torch.no_grad()
    def sample_actions(
        self,
        images: Mapping[str, Tensor],
        proprio: Tensor,
        lang: Tensor,
        steps: int = 2,
        churn: float = 0.0,
        generator: Generators = None,
        objects: ObjectTokens | None = None,
        xi_scale: float = 1.0,
    ) -> Tensor:
        """One action chunk per observation (Algorithm 2): (B, 8, 7) in environment units.
        ``xi_scale`` multiplies the generator noise (:func:`policy.diffusion.sample`)."""
        cond = self.encode(images, proprio, lang, objects)
        tokens = cond[0] if isinstance(cond, tuple) else cond
        b = tokens.shape[0]
        x0 = sample(
            self.denoiser,
            (b, self.cfg.chunk_size, self.cfg.action_dim),
            self.noise_shape,
            steps,
            churn,
            cond,
            device=tokens.device,
            dtype=tokens.dtype,
            generator=generator,
            xi_scale=xi_scale,
        )
        return self.normalizer.unnormalize_actions(x0.float().clamp(-1.0, 1.0))
