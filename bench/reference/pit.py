"""PiT, the Pixel Transformer (Nguyen et al. 2024), in PyTorch as a timm / MoCo v3 style ViT with
patch size 1, as pixelseq's src/models/pit.rs builds it: Linear(C -> d) per pixel, [cls] token,
learned positions, pre-norm blocks with a fused qkv projection and
F.scaled_dot_product_attention, exact GELU MLP, stochastic depth, LayerNorm (eps 1e-6) and head on
the pooled token. Initialised as MoCo v3's ViT: zero biases, [cls] N(0, 1e-6); positions N(0, 0.02)."""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from common import NUM_CLASSES, InputEncoder, tag

EMB_STD = 0.02
CLS_STD = 1e-6
LN_EPS = 1e-6


def linear(d_in, d_out):
    layer = nn.Linear(d_in, d_out)
    nn.init.xavier_uniform_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def drop_path(x, p, training):
    if not training or p == 0.0:
        return x
    keep = 1.0 - p
    mask = (torch.rand(x.size(0), 1, 1, device=x.device) < keep).to(x.dtype)
    return x * mask / keep


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d = cfg["d_model"]
        self.qkv = linear(d, 3 * d)
        bound = math.sqrt(6.0 / (2 * d))  # MoCo v3: q, k, v each as a d x d matrix
        nn.init.uniform_(self.qkv.weight, -bound, bound)
        self.proj = linear(d, d)
        self.n_heads = cfg["n_heads"]
        self.attn_dropout = cfg["attn_dropout"]
        self.drop = nn.Dropout(cfg["dropout"])

    def forward(self, x):
        B, L, D = x.shape
        qkv = self.qkv(x).view(B, L, 3, self.n_heads, D // self.n_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, h, L, hd) each
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_dropout if self.training else 0.0)
        return self.drop(self.proj(y.transpose(1, 2).reshape(B, L, D)))


class Block(nn.Module):
    def __init__(self, cfg, drop_path):
        super().__init__()
        d, f = cfg["d_model"], cfg["d_ff"]
        self.norm1 = nn.LayerNorm(d, eps=LN_EPS)
        self.attn = Attention(cfg)
        self.norm2 = nn.LayerNorm(d, eps=LN_EPS)
        self.fc1, self.fc2 = linear(d, f), linear(f, d)
        self.drop = nn.Dropout(cfg["dropout"])
        self.drop_path = drop_path

    def forward(self, x):
        x = x + drop_path(self.attn(self.norm1(x)), self.drop_path, self.training)
        m = self.drop(self.fc2(self.drop(F.gelu(self.fc1(self.norm2(x))))))
        return x + drop_path(m, self.drop_path, self.training)


class Pit(nn.Module):
    def __init__(self, cfg, channels, seq_len):
        super().__init__()
        d, depth = cfg["d_model"], cfg["depth"]
        self.pixels = InputEncoder(cfg["input"], channels, d, 256, EMB_STD)
        if cfg["input"] == "embed":
            tag(self.pixels.embed.weight, "no_decay")
        else:
            nn.init.xavier_uniform_(self.pixels.linear.weight)
            nn.init.zeros_(self.pixels.linear.bias)
        self.cls = tag(nn.Parameter(CLS_STD * torch.randn(1, 1, d)), "no_decay")
        self.pos = None
        if cfg["pos"] == "learned":
            self.pos = tag(nn.Parameter(EMB_STD * torch.randn(1, seq_len + 1, d)), "no_decay")
        self.drop = nn.Dropout(cfg["dropout"])
        rates = [cfg["drop_path"] * (i / (depth - 1) if depth > 1 else 1.0) for i in range(depth)]
        self.blocks = nn.ModuleList([Block(cfg, r) for r in rates])
        self.norm = nn.LayerNorm(d, eps=LN_EPS)
        self.head = linear(d, NUM_CLASSES)
        self.pool = cfg["pool"]

    def forward(self, x):  # (B, L, C) uint8
        p = self.pixels(x)  # (B, L, D)
        B = p.size(0)
        h = torch.cat([self.cls.expand(B, -1, -1).to(p.dtype), p], dim=1)  # (B, L+1, D)
        if self.pos is not None:
            h = h + self.pos
        h = self.drop(h)
        for block in self.blocks:
            h = block(h)
        pooled = h[:, 0] if self.pool == "cls" else h[:, 1:].mean(dim=1)
        return self.head(self.norm(pooled)).float()  # (B, 10)


def build(cfg, channels, seq_len):
    return Pit(cfg, channels, seq_len), "ViT, patch size 1: fused qkv, F.scaled_dot_product_attention"
