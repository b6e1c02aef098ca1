"""What several reference models share, as pixelseq's src/models/common.rs: how raw pixels enter
a model, and the optimizer-group tags that the runner turns into AdamW parameter groups."""

import torch
import torch.nn as nn

NUM_CLASSES = 10

# Per-channel mean and std on the 0..255 scale (common.rs `channel_stats`).
GRAY_STATS = ([122.6], [61.0])
RGB_STATS = ([125.307, 122.950, 113.865], [62.993, 62.089, 66.705])


def tag(param, group):
    """Marks a parameter for an optimizer group: "no_decay" or "ssm" (pixelseq's NO_DECAY, SSM)."""
    param._optim_group = group
    return param


class InputEncoder(nn.Module):
    """Raw pixels (B, L, C) uint8 -> vectors (B, L, d): a token embedding of grey values ("embed")
    or Linear(C -> d) on per-channel normalised values ("linear")."""

    def __init__(self, mode, channels, d, vocab=256, embed_std=1.0):
        super().__init__()
        self.mode = mode
        if mode == "embed":
            self.embed = nn.Embedding(vocab, d)
            nn.init.normal_(self.embed.weight, std=embed_std)
        else:
            self.linear = nn.Linear(channels, d)
            mean, std = GRAY_STATS if channels == 1 else RGB_STATS
            self.register_buffer("mean", torch.tensor(mean), persistent=False)
            self.register_buffer("std", torch.tensor(std), persistent=False)

    def forward(self, x):
        if self.mode == "embed":
            return self.embed(x.squeeze(-1).long())  # (B, L, d)
        return self.linear((x.float() - self.mean) / self.std)  # (B, L, d)
