"""The Transformer classifiers of pixelseq's src/models/transformer.rs in PyTorch: the LRA
paper's Image Transformer (google-research/long-range-arena transformer.py: pre-LN, CLS token,
learned positions, q/k/v/out projections, GELU MLP, Dense-ReLU-Dense classifier) and the
Nyströmformer paper's softmax baseline (mlpen/Nystromformer LRA/code model.py, attention.py:
mean pooling, biased projections). Attention is F.scaled_dot_product_attention with black pixels
as padding: an additive -1e9 on masked keys, and masked query rows attend uniformly, as LRA.
The body (`Encoder`) takes the token mixer as an argument; nystromformer.py plugs in its own."""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from common import NUM_CLASSES, InputEncoder, tag

MASKED = -1e9


def dense(d_in, d_out, bias, init, classifier=False):
    layer = nn.Linear(d_in, d_out, bias=bias)
    if init == "lra":
        if classifier:
            nn.init.normal_(layer.weight, std=1.0 / math.sqrt(d_in))
            if bias:
                nn.init.zeros_(layer.bias)
        else:
            nn.init.xavier_uniform_(layer.weight)
            if bias:
                nn.init.normal_(layer.bias, std=1e-6)
    return layer


def key_bias(keep, dtype):
    """(B, L) bool, true where a key may be attended -> (B, 1, 1, L) additive bias."""
    B, L = keep.shape
    return (~keep).to(dtype).mul(MASKED).view(B, 1, 1, L)


class Softmax(nn.Module):
    def __init__(self, dropout):
        super().__init__()
        self.dropout = dropout

    def forward(self, q, k, v, keep):  # (B, H, L, Dh) each, keep (B, L)
        p = self.dropout if self.training else 0.0
        if keep is None:
            return F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        B, L = keep.shape
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=key_bias(keep, q.dtype), dropout_p=p)
        return torch.where(keep.view(B, 1, L, 1), y, v.mean(dim=-2, keepdim=True))  # (B, H, L, Dh)


class SelfAttention(nn.Module):
    def __init__(self, cfg, mixer):
        super().__init__()
        d, e, bias, init = cfg["d_model"], cfg["qkv_dim"], cfg["attn_bias"], cfg["init"]
        self.q, self.k, self.v = (dense(d, e, bias, init) for _ in range(3))
        self.out = dense(e, d, bias, init)
        self.mixer = mixer
        self.n_heads = cfg["n_heads"]

    def forward(self, x, keep):
        B, L, _ = x.shape
        q, k, v = (proj(x).view(B, L, self.n_heads, -1).transpose(1, 2) for proj in (self.q, self.k, self.v))
        y = self.mixer(q, k, v, keep)  # (B, H, L, Dh)
        return self.out(y.transpose(1, 2).reshape(B, L, -1))  # (B, L, d)


class Block(nn.Module):
    def __init__(self, cfg, mixer):
        super().__init__()
        d, eps = cfg["d_model"], cfg["layer_norm_eps"]
        self.ln1 = nn.LayerNorm(d, eps=eps)
        self.attn = SelfAttention(cfg, mixer)
        self.ln2 = nn.LayerNorm(d, eps=eps)
        self.fc1 = dense(d, cfg["mlp_dim"], True, cfg["init"])
        self.fc2 = dense(cfg["mlp_dim"], d, True, cfg["init"])
        self.drop = nn.Dropout(cfg["dropout"])
        self.gelu = "tanh" if cfg["gelu"] == "tanh" else "none"

    def forward(self, x, keep):
        x = x + self.drop(self.attn(self.ln1(x), keep))
        y = self.drop(F.gelu(self.fc1(self.ln2(x)), approximate=self.gelu))
        return x + self.drop(self.fc2(y))


class Encoder(nn.Module):
    """Embedding (+ CLS) + positions, blocks, final LayerNorm, pooling, Dense-ReLU-Dense head."""

    def __init__(self, cfg, channels, seq_len, mixer):
        super().__init__()
        d = cfg["d_model"]
        self.embed = InputEncoder(cfg["input"], channels, d, cfg["vocab"], cfg["token_init_std"])
        if cfg["input"] == "embed":
            tag(self.embed.embed.weight, "no_decay")
        self.pool = cfg["pool"]
        self.cls = tag(nn.Parameter(torch.zeros(1, 1, d)), "no_decay") if self.pool == "cls" else None
        self.pos = tag(nn.Parameter(0.02 * torch.randn(1, seq_len + (self.pool == "cls"), d)), "no_decay")
        self.drop = nn.Dropout(cfg["dropout"])
        self.blocks = nn.ModuleList([Block(cfg, mixer()) for _ in range(cfg["n_layers"])])
        self.norm = nn.LayerNorm(d, eps=cfg["layer_norm_eps"])
        self.head_hidden = dense(d, cfg["mlp_dim"], True, cfg["init"], classifier=True)
        self.head_out = dense(cfg["mlp_dim"], NUM_CLASSES, True, cfg["init"], classifier=True)
        self.mask_black_pixels = cfg["mask_black_pixels"]

    def forward(self, x):  # (B, L, C) uint8
        B = x.size(0)
        h = self.embed(x)  # (B, L, d)
        keep = (x != 0).any(dim=-1) if self.mask_black_pixels else None  # (B, L)
        if self.cls is not None:
            h = torch.cat([self.cls.expand(B, -1, -1).to(h.dtype), h], dim=1)  # (B, L+1, d)
            if keep is not None:
                keep = torch.cat([keep[:, :1], keep], dim=1)  # CLS copies pixel 0
        h = self.drop(h + self.pos)
        for block in self.blocks:
            h = block(h, keep)
        h = self.norm(h)
        if self.pool == "cls":
            pooled = h[:, 0]
        elif keep is None:
            pooled = h.mean(dim=1)
        else:
            pooled = (h * keep.unsqueeze(-1).to(h.dtype)).mean(dim=1)
        return self.head_out(F.relu(self.head_hidden(pooled))).float()  # (B, 10)


def build(cfg, channels, seq_len):
    model = Encoder(cfg, channels, seq_len, lambda: Softmax(cfg["attn_dropout"]))
    return model, "softmax attention: F.scaled_dot_product_attention with an additive key mask"
