"""Nyströmformer in PyTorch, as mlpen/Nystromformer LRA/code/attention_nystrom.py computes it
(landmarks as segment means, three softmax kernels, iterative pseudo-inverse, depthwise
convolution skip on V), in the body of transformer.py as pixelseq's src/models/nystromformer.rs
configures it (mean pooling, biased projections, PyTorch init, exact GELU, LayerNorm eps 1e-5,
no attention dropout). The attention runs in float32 with autocast off, as both do."""

import torch
import torch.nn as nn

from transformer import Encoder, key_bias


def iterative_inv(A, n_iter, init):
    """Moore-Penrose pseudo-inverse of A (.., m, m) by n_iter Newton-Schulz-type iterations."""
    I = torch.eye(A.size(-1), device=A.device, dtype=A.dtype)
    if init == "paper":
        norm_1 = A.abs().sum(dim=-2).amax(dim=-1, keepdim=True)  # max column sum
        norm_inf = A.abs().sum(dim=-1).amax(dim=-1, keepdim=True)  # max row sum
        V = A.transpose(-1, -2) / (norm_1 * norm_inf).unsqueeze(-1)
    else:
        V = A.transpose(-1, -2) / torch.max(torch.sum(A, dim=-2))
    for _ in range(n_iter):
        KV = A @ V
        V = (0.25 * V) @ (13 * I - KV @ (15 * I - KV @ (7 * I - KV)))
    return V


class NystromAttention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.num_landmarks = cfg["landmarks"]
        self.n_iter = cfg["pinv_iters"]
        self.init = cfg["pinv_init"]
        k = cfg["conv_kernel"]
        self.conv = None
        if k > 0:
            H = cfg["n_heads"]
            self.conv = nn.Conv2d(H, H, kernel_size=(k, 1), padding=(k // 2, 0), bias=False, groups=H)

    def forward(self, Q, K, V, keep):  # (B, H, L, Dh) each, keep (B, L)
        with torch.autocast(Q.device.type, enabled=False):
            B, H, L, Dh = Q.shape
            scale = Dh ** -0.25
            Q, K, V = Q.float() * scale, K.float() * scale, V.float()
            bias = None
            if keep is not None:
                m = keep.float().view(B, 1, L, 1)
                Q, K, V_masked, bias = Q * m, K * m, V * m, key_bias(keep, torch.float32)
            else:
                V_masked = V
            if self.num_landmarks == L:
                X = torch.nn.functional.scaled_dot_product_attention(Q, K, V, attn_mask=bias, scale=1.0)
            else:
                segments = (B, H, self.num_landmarks, L // self.num_landmarks, Dh)
                Q_landmarks = Q.reshape(segments).mean(dim=-2)  # (B, H, m, Dh)
                K_landmarks = K.reshape(segments).mean(dim=-2)  # (B, H, m, Dh)
                kernel_1 = torch.softmax(Q @ K_landmarks.transpose(-1, -2), dim=-1)  # (B, H, L, m)
                kernel_2 = torch.softmax(Q_landmarks @ K_landmarks.transpose(-1, -2), dim=-1)  # (B, H, m, m)
                logits = Q_landmarks @ K.transpose(-1, -2)  # (B, H, m, L)
                kernel_3 = torch.softmax(logits if bias is None else logits + bias, dim=-1)
                X = (kernel_1 @ iterative_inv(kernel_2, self.n_iter, self.init)) @ (kernel_3 @ V)
            if self.conv is not None:
                X = X + self.conv(V_masked)
            return X  # (B, H, L, Dh)


def body(cfg):
    """The shared Transformer body as nystromformer.rs `Config::body` sets it."""
    return dict(
        cfg,
        attn_dropout=0.0,
        pool="mean",
        attn_bias=True,
        init="pytorch",
        gelu="exact",
        layer_norm_eps=1e-5,
    )


def build(cfg, channels, seq_len):
    model = Encoder(body(cfg), channels, seq_len, lambda: NystromAttention(cfg))
    return model, f"Nystrom attention, {cfg['landmarks']} landmarks, {cfg['pinv_iters']} pinv iterations"
