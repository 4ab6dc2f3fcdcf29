"""Vision Transformers: `vit_b16`, `vit_b32` (ViT-Base, 224 input) and `vit_tiny` (CPU-trainable, 48x48).

Patch embedding (a strided conv), a class token, learned position embeddings, pre-norm transformer
blocks (multi-head self-attention written out with matmuls so it exports to plain ONNX ops, GELU
MLP), a final LayerNorm and a linear head on the class token. Grad-CAM uses the last block's
`norm1` tokens, folded back to the patch grid by `gradcam_reshape`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from training.models.layers import make_cfg
from training.models.registry import register_model


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = torch.softmax((q * self.scale) @ k.transpose(-2, -1), dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float, drop: float) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(drop), nn.Linear(hidden, dim))
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x)))
        return x + self.drop(self.mlp(self.norm2(x)))


class VisionTransformer(nn.Module):
    default_cfg: dict[str, Any]

    def __init__(
        self,
        num_classes: int,
        in_chans: int,
        input_size: int,
        patch: int,
        dim: int,
        depth: int,
        heads: int,
        mlp_ratio: float = 4.0,
        drop: float = 0.0,
    ) -> None:
        super().__init__()
        if input_size % patch:
            raise ValueError(f"input_size {input_size} is not a multiple of the patch size {patch}")
        if dim % heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {heads}")
        self.grid = input_size // patch
        self.patch_embed = nn.Conv2d(in_chans, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, self.grid**2 + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_ratio, drop) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)
        self.gradcam_layer = f"blocks.{depth - 1}.norm1"
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])

    def gradcam_reshape(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, 1+N, D) tokens -> (B, D, grid, grid) map, dropping the class token."""
        b, _, d = tokens.shape
        return tokens[:, 1:].transpose(1, 2).reshape(b, d, self.grid, self.grid)


def _vit(
    arch: str, num_classes: int, in_chans: int, pretrained: bool, input_size: int, patch_size: int, **kw: Any
) -> nn.Module:
    if pretrained:
        raise ValueError(f"{arch} has no pretrained weights in emoserve; train it from scratch")
    model = VisionTransformer(num_classes, in_chans, input_size, patch_size, **kw)
    model.default_cfg = make_cfg(arch, in_chans, input_size)
    return model


@register_model("vit_b16")
def vit_b16(
    num_classes: int,
    in_chans: int = 1,
    pretrained: bool = False,
    input_size: int = 224,
    embed_dim: int = 768,
    depth: int = 12,
    num_heads: int = 12,
    drop: float = 0.1,
) -> nn.Module:
    """ViT-B/16: 16x16 patches, 768 wide, 12 blocks of 12 heads."""
    return _vit("vit_b16", num_classes, in_chans, pretrained, input_size, 16, dim=embed_dim, depth=depth,
                heads=num_heads, drop=drop)  # fmt: skip


@register_model("vit_b32")
def vit_b32(
    num_classes: int,
    in_chans: int = 1,
    pretrained: bool = False,
    input_size: int = 224,
    embed_dim: int = 768,
    depth: int = 12,
    num_heads: int = 12,
    drop: float = 0.1,
) -> nn.Module:
    """ViT-B/32: 32x32 patches, otherwise as ViT-B/16."""
    return _vit("vit_b32", num_classes, in_chans, pretrained, input_size, 32, dim=embed_dim, depth=depth,
                heads=num_heads, drop=drop)  # fmt: skip


@register_model("vit_tiny")
def vit_tiny(
    num_classes: int,
    in_chans: int = 1,
    pretrained: bool = False,
    input_size: int = 48,
    patch_size: int = 4,
    embed_dim: int = 192,
    depth: int = 6,
    num_heads: int = 3,
    drop: float = 0.1,
) -> nn.Module:
    """A small ViT that trains on CPU: 48x48 gray, 4x4 patches (144 tokens), 192 wide, 6 blocks."""
    return _vit("vit_tiny", num_classes, in_chans, pretrained, input_size, patch_size, dim=embed_dim, depth=depth,
                heads=num_heads, drop=drop)  # fmt: skip
