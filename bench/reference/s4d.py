"""S4D in PyTorch, written the way state-spaces/s4 writes it: models/s4/s4d.py (S4DKernel, S4D
layer in (B, H, L) layout, FFT convolution of length 2L, Conv1d(H, 2H, 1) + GLU output) and
example.py (encoder, residual blocks with pre- or post-norm, mean pooling, decoder), with the
options of pixelseq's src/models/s4d.rs (bidirectional kernel, trained B, BatchNorm, C at the SSM
learning rate, convolution dropout, untied dropout). The SSM convolution runs in float32 with
autocast off, as in pixelseq."""

import math

import torch
import torch.nn as nn

from common import NUM_CLASSES, InputEncoder, tag


class S4DKernel(nn.Module):
    """Vandermonde kernel K_l = 2 Re sum_n C_n B_n (exp(dt A_n) - 1) / A_n exp(dt A_n l)."""

    def __init__(self, cfg):
        super().__init__()
        H, N = cfg["d_model"], cfg["d_state"] // 2
        log_dt = torch.rand(H) * (math.log(cfg["dt_max"]) - math.log(cfg["dt_min"])) + math.log(cfg["dt_min"])
        self.log_dt = tag(nn.Parameter(log_dt), "ssm")
        self.log_A_real = tag(nn.Parameter(torch.log(0.5 * torch.ones(H, N))), "ssm")
        self.A_imag = tag(nn.Parameter(math.pi * torch.arange(N).float().repeat(H, 1)), "ssm")
        self.B = None
        if cfg["train_b"]:
            self.B = tag(nn.Parameter(torch.view_as_real(torch.ones(H, N, dtype=torch.cfloat))), "ssm")
        kernels = 2 if cfg["bidirectional"] else 1
        self.C = nn.Parameter(torch.view_as_real(torch.randn(kernels, H, N, dtype=torch.cfloat)))
        if cfg["c_ssm_lr"]:
            tag(self.C, "ssm")

    def forward(self, L):
        dt = torch.exp(self.log_dt)  # (H)
        A = torch.complex(-torch.exp(self.log_A_real), self.A_imag)  # (H N)
        dtA = A * dt.unsqueeze(-1)  # (H N)
        B = (torch.exp(dtA) - 1.0) / A  # (H N)
        if self.B is not None:
            B = B * torch.view_as_complex(self.B)
        C = torch.view_as_complex(self.C) * B  # (K H N)
        K = dtA.unsqueeze(-1) * torch.arange(L, device=A.device)  # (H N L)
        return 2 * torch.einsum("khn,hnl->khl", C, torch.exp(K)).real  # (K H L)


def dropout(p, tied):
    return nn.Dropout1d(p) if tied else nn.Dropout(p)


class S4D(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        H = cfg["d_model"]
        self.bidirectional = cfg["bidirectional"]
        self.conv_dropout = cfg["conv_dropout"]
        self.kernel = S4DKernel(cfg)
        self.D = nn.Parameter(torch.randn(H))
        self.activation = nn.GELU()
        self.dropout = dropout(cfg["dropout"], cfg["tie_dropout"])
        self.output_linear = nn.Sequential(nn.Conv1d(H, 2 * H, kernel_size=1), nn.GLU(dim=-2))

    def ssm(self, u):
        """y = K * u + D u, u (B H L) float32."""
        L = u.size(-1)
        k = self.kernel(L)  # (K H L)
        if self.bidirectional:
            k = nn.functional.pad(k[0], (0, L)) + nn.functional.pad(k[1].flip(-1), (L, 0))  # (H 2L)
        else:
            k = k[0]  # (H L)
        k_f = torch.fft.rfft(k, n=2 * L)  # (H L+1)
        u_f = torch.fft.rfft(u, n=2 * L)  # (B H L+1)
        y = torch.fft.irfft(u_f * k_f, n=2 * L)[..., :L]  # (B H L)
        return y + u * self.D.unsqueeze(-1)  # (B H L)

    def forward(self, u):  # (B H L)
        with torch.autocast(u.device.type, enabled=False):
            y = self.ssm(u.float())  # (B H L)
        if self.conv_dropout:
            y = self.dropout(y)
        y = self.dropout(self.activation(y))
        return self.output_linear(y)  # (B H L)


class Norm(nn.Module):
    """LayerNorm over H or BatchNorm1d, on (B H L)."""

    def __init__(self, kind, H):
        super().__init__()
        self.layer = kind == "layer"
        self.norm = nn.LayerNorm(H) if self.layer else nn.BatchNorm1d(H)

    def forward(self, x):
        if self.layer:
            return self.norm(x.transpose(-1, -2)).transpose(-1, -2)
        return self.norm(x)


class S4DModel(nn.Module):
    def __init__(self, cfg, channels):
        super().__init__()
        H = cfg["d_model"]
        self.prenorm = cfg["prenorm"]
        self.encoder = InputEncoder("linear", channels, H)
        self.layers = nn.ModuleList([S4D(cfg) for _ in range(cfg["n_layers"])])
        self.norms = nn.ModuleList([Norm(cfg["norm"], H) for _ in range(cfg["n_layers"])])
        self.dropouts = nn.ModuleList([dropout(cfg["dropout"], cfg["tie_dropout"]) for _ in range(cfg["n_layers"])])
        self.final_norm = Norm(cfg["norm"], H) if self.prenorm else None
        self.decoder = nn.Linear(H, NUM_CLASSES)

    def forward(self, x):
        x = self.encoder(x).transpose(-1, -2)  # (B H L)
        for layer, norm, drop in zip(self.layers, self.norms, self.dropouts):
            z = norm(x) if self.prenorm else x
            z = drop(layer(z))
            x = z + x
            if not self.prenorm:
                x = norm(x)
        if self.final_norm is not None:
            x = self.final_norm(x)
        x = x.mean(dim=-1)  # (B H)
        return self.decoder(x).float()  # (B 10)


def build(cfg, channels, seq_len):
    return S4DModel(cfg, channels), "S4D: Vandermonde kernel, FFT convolution of length 2L in (B, H, L) layout (s4d.py)"
