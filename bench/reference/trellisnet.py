"""TrellisNet in PyTorch as locuslab/trellisnet TrellisNet/trellisnet.py computes it, with the
options of pixelseq's src/models/trellisnet.rs: one weight-tied, weight-normalised pair of causal
convolutions (input W1, hidden W2) applied at every level with that level's dilation, the input
injection W1 x computed once per distinct dilation, LSTM-style gates, variational hidden dropout
(one mask per sequence), DropConnect on the past taps, readout of the last nout channels at the
last step. Pixels enter as x / 127.5 - 1 (torchvision Normalize(0.5, 0.5))."""

import torch
import torch.nn as nn
import torch.nn.functional as F

from common import NUM_CLASSES, tag


class WeightNormKernel(nn.Module):
    """w = g v / ||v|| over dims (1, 2), v ~ N(0, std^2), g = ||v|| at initialisation."""

    def __init__(self, out_ch, in_ch, k, std):
        super().__init__()
        self.v = nn.Parameter(torch.randn(out_ch, in_ch, k) * std)
        self.g = tag(nn.Parameter(self.v.detach().norm(dim=(1, 2), keepdim=True).clone()), "no_decay")

    def weight(self, p_drop, training):
        past = F.dropout(self.v[:, :, :-1], p_drop, training)  # DropConnect on the t-d taps
        v = torch.cat([past, self.v[:, :, -1:]], dim=2)
        return v * (self.g / v.norm(dim=(1, 2), keepdim=True))


class TrellisNet(nn.Module):
    def __init__(self, cfg, channels):
        super().__init__()
        self.nout = cfg["nout"]
        self.h_size = cfg["nhid"] + cfg["nout"]
        self.dilations = cfg["dilations"]
        self.k = cfg["kernel_size"]
        self.dropout_input = cfg["dropout_input"]
        self.dropout_hidden = cfg["dropout_hidden"]
        self.dropout_weight = cfg["dropout_weight"]
        self.dropout_output = cfg["dropout_output"]
        H, std = self.h_size, cfg["init_std"]
        self.w1 = WeightNormKernel(4 * H, channels, self.k, std)
        self.w2 = WeightNormKernel(4 * H, H, self.k, std)
        self.b2 = nn.Parameter(torch.randn(4 * H) * std)
        self.head = nn.Linear(self.nout, NUM_CLASSES)

    def forward(self, x):  # (B, L, C) uint8
        B, L, _ = x.shape
        H, k = self.h_size, self.k
        x = F.dropout((x.float() / 127.5 - 1.0).transpose(1, 2), self.dropout_input, self.training)  # (B, C, L)
        w1 = self.w1.weight(self.dropout_weight, self.training)
        w2 = self.w2.weight(self.dropout_weight, self.training)
        mask = F.dropout(torch.ones(B, H, 1, device=x.device), self.dropout_hidden, self.training)
        injected = {}
        for d in self.dilations:
            if d not in injected:
                injected[d] = F.conv1d(F.pad(x, ((k - 1) * d, 0)), w1, dilation=d)  # (B, 4H, L)
        h = torch.zeros(B, H, L, device=x.device)
        c = torch.zeros(B, H, L, device=x.device)
        for d in self.dilations:
            out = injected[d] + F.conv1d(F.pad(h * mask, ((k - 1) * d, 0)), w2, self.b2, dilation=d)
            i, o, g, f = out.chunk(4, dim=1)
            c_past = F.pad(c, (d, 0))[:, :, :L]
            c = torch.sigmoid(f) * c_past + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
        out = h[:, -self.nout:, -1]  # (B, nout)
        return F.dropout(self.head(out), self.dropout_output, self.training).float()


def build(cfg, channels, seq_len):
    return TrellisNet(cfg, channels), "TrellisNet: weight-tied dilated conv1d, injection once per dilation"
