"""LRU ("Resurrecting Recurrent Neural Networks for Long Sequences", Orvieto et al. 2023) in
PyTorch, after the paper's appendix code and pixelseq's src/models/lru.rs: exponential
parameterisation nu, theta, gamma; complex B and C as real and imaginary parts; D skip; GELU,
GLU-style gate out1(z) * sigmoid(out2(z)), residual with pre- or post-norm. Like with like: the
linear recurrence runs in the formulation pixelseq uses (config key `parallel`): "fft", the
convolution with the kernel lambda^l through complex FFTs of length 2L along the last axis of a
(B, N, L) view, or "chunked", dense products inside chunks and a carry across them. In float32
with autocast off, as pixelseq."""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from common import NUM_CLASSES, InputEncoder, tag


def dense(d_in, d_out):
    layer = nn.Linear(d_in, d_out)
    nn.init.normal_(layer.weight, std=1.0 / math.sqrt(d_in))
    nn.init.zeros_(layer.bias)
    return layer


def fft_scan(u, log_lambda):
    """h_t = lambda h_{t-1} + u_t for u (B L N) complex, as a causal FFT convolution."""
    L = u.size(1)
    powers = torch.exp(log_lambda.unsqueeze(-1) * torch.arange(L, device=u.device))  # (N L)
    k_f = torch.fft.fft(powers, n=2 * L)  # (N 2L)
    u_f = torch.fft.fft(u.transpose(1, 2), n=2 * L)  # (B N 2L)
    return torch.fft.ifft(u_f * k_f, n=2 * L)[..., :L].transpose(1, 2)  # (B L N)


def lower_powers(size, step, log_lambda):
    idx = torch.arange(size, device=log_lambda.device, dtype=torch.float32)
    lag = idx.unsqueeze(1) - idx.unsqueeze(0)  # (S S)
    causal = (lag >= 0).float().unsqueeze(-1)  # (S S 1)
    return torch.exp(lag.clamp_min(0).unsqueeze(-1) * step * log_lambda) * causal  # (S S N)


def chunked_scan(u, log_lambda, T):
    B, L, N = u.shape
    C = L // T
    u = u.view(B, C, T, N)
    local = torch.einsum("ijn,bcjn->bcin", lower_powers(T, 1.0, log_lambda), u)  # (B C T N)
    ends = local[:, :, T - 1]  # (B C N)
    across = F.pad(lower_powers(C, float(T), log_lambda)[: C - 1], (0, 0, 0, 0, 1, 0))  # (C C N)
    carry = torch.einsum("cjn,bjn->bcn", across, ends)  # (B C N)
    decay = torch.exp(torch.arange(1, T + 1, device=u.device).unsqueeze(-1) * log_lambda)  # (T N)
    return (local + carry.unsqueeze(2) * decay).view(B, L, N)  # (B L N)


class LRULayer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        H, N = cfg["d_model"], cfg["d_state"]
        r2_min, r2_max = cfg["r_min"] ** 2, cfg["r_max"] ** 2
        radius2 = torch.rand(N) * (r2_max - r2_min) + r2_min  # |lambda|^2
        self.nu_log = tag(nn.Parameter(torch.log(-0.5 * torch.log(radius2))), "ssm")
        self.theta_log = tag(nn.Parameter(torch.log(cfg["max_phase"] * torch.rand(N))), "ssm")
        self.gamma_log = tag(nn.Parameter(torch.log(torch.sqrt(1 - radius2))), "ssm")
        self.B_re = tag(nn.Parameter(torch.randn(N, H) / math.sqrt(2 * H)), "ssm")
        self.B_im = tag(nn.Parameter(torch.randn(N, H) / math.sqrt(2 * H)), "ssm")
        self.C_re = nn.Parameter(torch.randn(H, N) / math.sqrt(N))
        self.C_im = nn.Parameter(torch.randn(H, N) / math.sqrt(N))
        self.D = nn.Parameter(torch.randn(H))
        self.parallel = cfg["parallel"]
        self.chunk = cfg["chunk"]

    def forward(self, x):  # (B L H) float32
        log_lambda = torch.complex(-torch.exp(self.nu_log), torch.exp(self.theta_log))  # (N)
        gamma = torch.exp(self.gamma_log).unsqueeze(-1)  # (N 1)
        u = torch.complex(x @ (self.B_re * gamma).T, x @ (self.B_im * gamma).T)  # (B L N)
        if self.parallel == "fft":
            h = fft_scan(u, log_lambda)
        else:
            h = chunked_scan(u, log_lambda, self.chunk)
        return h.real @ self.C_re.T - h.imag @ self.C_im.T + x * self.D  # (B L H)


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        H = cfg["d_model"]
        self.prenorm = cfg["prenorm"]
        self.lru = LRULayer(cfg)
        self.out1, self.out2 = dense(H, H), dense(H, H)
        self.layer_norm = cfg["norm"] == "layer"
        self.norm = nn.LayerNorm(H) if self.layer_norm else nn.BatchNorm1d(H, momentum=0.01)
        self.drop = nn.Dropout1d(cfg["dropout"])

    def normalise(self, x):  # (B L H)
        return self.norm(x) if self.layer_norm else self.norm(x.transpose(1, 2)).transpose(1, 2)

    def dropout(self, x):  # (B L H), one mask per (example, channel)
        return self.drop(x.transpose(1, 2)).transpose(1, 2)

    def forward(self, x):  # (B L H)
        z = self.normalise(x) if self.prenorm else x
        with torch.autocast(x.device.type, enabled=False):
            z = self.lru(z.float())
        z = self.dropout(F.gelu(z, approximate="tanh"))
        z = self.dropout(self.out1(z) * torch.sigmoid(self.out2(z)))
        x = x + z
        return x if self.prenorm else self.normalise(x)


class LRUModel(nn.Module):
    def __init__(self, cfg, channels):
        super().__init__()
        H = cfg["d_model"]
        self.encoder = InputEncoder("linear", channels, H)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg["n_layers"])])
        self.head = dense(H, NUM_CLASSES)

    def forward(self, x):
        x = self.encoder(x)  # (B L H)
        for block in self.blocks:
            x = block(x)
        return self.head(x.mean(dim=1)).float()  # (B 10)


def build(cfg, channels, seq_len):
    how = "FFT scan (complex FFT of length 2L)" if cfg["parallel"] == "fft" else f"chunked scan (chunks of {cfg['chunk']})"
    return LRUModel(cfg, channels), f"LRU: {how}, as pixelseq"
