"""FNet in PyTorch, after google-research f_net/layers.py and models.py as pixelseq's
src/models/fnet.rs reads them: word ([CLS] prepended) + learned position embeddings, LayerNorm,
Dense(d_emb -> d_model), dropout; post-norm blocks x = LN(x + Re FFT2(x)), x = LN(x + Dropout(
W2 GELU(W1 x))); pooler Dense + tanh on token 0; output Dense. The Fourier transform runs on
float32 (cuFFT has no bf16), torch.fft.fft2 over (sequence, hidden)."""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from common import NUM_CLASSES, InputEncoder, tag

LN_EPS = 1e-12
INIT_STD = 0.02


def dense(d_in, d_out, bias_std):
    layer = nn.Linear(d_in, d_out)
    nn.init.normal_(layer.weight, std=INIT_STD)
    nn.init.normal_(layer.bias, std=bias_std) if bias_std > 0 else nn.init.zeros_(layer.bias)
    return layer


class FourierBlock(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d, ff = cfg["d_model"], cfg["d_ff"]
        self.mixing_norm = nn.LayerNorm(d, eps=LN_EPS)
        self.ff_in = dense(d, ff, INIT_STD)
        self.ff_out = dense(ff, d, 0.0)
        self.output_norm = nn.LayerNorm(d, eps=LN_EPS)
        self.drop = nn.Dropout(cfg["dropout"])

    def forward(self, x):  # (B, L, D)
        x = self.mixing_norm(x + torch.fft.fft2(x.float(), dim=(-2, -1)).real)
        ff = self.drop(self.ff_out(F.gelu(self.ff_in(x), approximate="tanh")))
        return self.output_norm(x + ff)


class FNet(nn.Module):
    def __init__(self, cfg, channels, seq_len):
        super().__init__()
        e, d = cfg["d_emb"], cfg["d_model"]
        self.word = InputEncoder(cfg["input"], channels, e, 256, INIT_STD)
        if cfg["input"] == "embed":
            tag(self.word.embed.weight, "no_decay")
        self.cls = tag(nn.Parameter(INIT_STD * torch.randn(1, 1, e)), "no_decay")
        self.pos = tag(nn.Parameter(INIT_STD * torch.randn(1, seq_len + 1, e)), "no_decay")
        self.emb_norm = nn.LayerNorm(e, eps=LN_EPS)
        self.hidden_mapping_in = nn.Linear(e, d)
        nn.init.normal_(self.hidden_mapping_in.weight, std=1.0 / math.sqrt(e))
        nn.init.zeros_(self.hidden_mapping_in.bias)
        self.drop = nn.Dropout(cfg["dropout"])
        self.layers = nn.ModuleList([FourierBlock(cfg) for _ in range(cfg["n_layers"])])
        self.pooler = dense(d, d, 0.0)
        self.head = dense(d, NUM_CLASSES, INIT_STD)

    def forward(self, x):  # (B, L, C) uint8
        words = self.word(x)  # (B, L, E)
        B = words.size(0)
        h = torch.cat([self.cls.expand(B, -1, -1).to(words.dtype), words], dim=1) + self.pos  # (B, L+1, E)
        h = self.drop(self.hidden_mapping_in(self.emb_norm(h)))
        for layer in self.layers:
            h = layer(h)
        pooled = torch.tanh(self.pooler(h[:, 0]))
        return self.head(pooled).float()  # (B, 10)


def build(cfg, channels, seq_len):
    return FNet(cfg, channels, seq_len), "Fourier mixing: torch.fft.fft2 over (L, D) in float32"
