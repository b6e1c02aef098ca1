"""LipschitzRNN in PyTorch as erichson/LipschitzRNN models.py writes it: A and W built once per
forward from B and C with beta and gamma, then a Python loop over the L pixels; each step is
explicit Euler (model LipschitzRNN) or the midpoint rule that torchdiffeq's fixed-grid `midpoint`
takes over [0, eps] (model LipschitzRNN_ODE), written out instead of calling odeint. As in the
reference, h A and h W are two matmuls per evaluation; the encoder U x + b runs once over the whole
sequence (the reference calls it once per step). Float32 with autocast off, as pixelseq."""

import torch
import torch.nn as nn

from common import NUM_CLASSES, InputEncoder


def hidden_matrix(M, beta, gamma):
    I = torch.eye(M.size(0), device=M.device)
    return (1 - beta) * (M + M.T) + beta * (M - M.T) - gamma * I


class LipschitzRNN(nn.Module):
    def __init__(self, cfg, channels):
        super().__init__()
        N = cfg["n_units"]
        self.beta, self.gamma, self.eps, self.solver = cfg["beta"], cfg["gamma"], cfg["eps"], cfg["solver"]
        self.E = InputEncoder("linear", channels, N)
        self.B = nn.Parameter(torch.randn(N, N) * cfg["init_std"] / N)
        self.C = nn.Parameter(torch.randn(N, N) * cfg["init_std"] / N)
        self.D = nn.Linear(N, NUM_CLASSES)

    def forward(self, x):  # (B, L, C) uint8
        with torch.autocast(x.device.type, enabled=False):
            z = self.E(x).float()  # (B, L, N)
            A = hidden_matrix(self.B, self.beta, self.gamma)
            W = hidden_matrix(self.C, self.beta, self.gamma)

            def f(h, z_t):
                return torch.matmul(h, A.T) + torch.tanh(torch.matmul(h, W.T) + z_t)

            h = torch.zeros(x.size(0), self.B.size(0), device=x.device)
            for t in range(z.size(1)):
                z_t = z[:, t]
                if self.solver == "euler":
                    h = h + self.eps * f(h, z_t)
                else:
                    h = h + self.eps * f(h + 0.5 * self.eps * f(h, z_t), z_t)
            return self.D(h)  # (B, 10)


def build(cfg, channels, seq_len):
    return LipschitzRNN(cfg, channels), f"LipschitzRNN: Python loop over L, {cfg['solver']}, two matmuls per evaluation"
