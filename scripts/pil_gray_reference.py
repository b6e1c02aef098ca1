"""Reference hash for pixelseq's PIL grayscale (`task.gray = "pil"`), computed by Pillow itself.

The self-pretraining code of Amos et al. (IdoAmos/not-from-scratch, `src/dataloaders/basic.py`)
makes its grayscale images with torchvision's `transforms.Grayscale()`, which on a PIL image is
`img.convert("L")`. This script converts every colour (r, g, b), r-major, with Pillow and prints
the sha256 of the 16,777,216 grey values, pinned as PIL_ALL_COLOURS_SHA256 in src/data/gray.rs.
It also counts the colours, and the pixels of the CIFAR-10 training and test images when a folder
of the official binary files is given, on which PIL and TensorFlow's conversion (pixelseq's
default, `tf.image.rgb_to_grayscale`) differ.

Usage (Pillow and NumPy, e.g. in pixelseq's cached venv):
    python scripts/pil_gray_reference.py [/path/to/cifar-10-batches-bin]
"""

import hashlib
import os
import sys

import numpy as np
import PIL
from PIL import Image

FILES = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]


def tf_gray(rgb):
    """TensorFlow's float32 conversion, as src/data/gray.rs computes it."""
    s = np.float32(1.0 / 255.0)
    f = rgb.astype(np.float32) * s
    y = f[..., 0] * np.float32(0.2989) + f[..., 1] * np.float32(0.5870)
    y = y + f[..., 2] * np.float32(0.1140)
    return (y * np.float32(255.5)).astype(np.uint8)


def pil_gray(rgb):
    """(..., 3) uint8 -> (...) uint8 through Pillow's convert("L")."""
    flat = rgb.reshape(-1, 3)
    n = flat.shape[0]
    img = Image.fromarray(flat.reshape(1, n, 3), "RGB")
    return np.asarray(img.convert("L")).reshape(rgb.shape[:-1])


def main():
    v = np.arange(256, dtype=np.uint8)
    cube = np.stack(np.meshgrid(v, v, v, indexing="ij"), -1).reshape(4096, 4096, 3)
    table = np.asarray(Image.fromarray(cube, "RGB").convert("L")).reshape(-1)
    print("pillow", PIL.__version__)
    print("all colours sha256", hashlib.sha256(table.tobytes()).hexdigest())
    print("colours where PIL and TensorFlow differ:", int((table != tf_gray(cube).reshape(-1)).sum()))
    if len(sys.argv) > 1:
        recs = np.concatenate(
            [np.fromfile(os.path.join(sys.argv[1], f), dtype=np.uint8).reshape(10000, 3073) for f in FILES]
        )
        rgb = recs[:, 1:].reshape(-1, 3, 1024).transpose(0, 2, 1)  # (N, 1024, 3)
        differ = pil_gray(rgb) != tf_gray(rgb)
        print(f"CIFAR-10 pixels where PIL and TensorFlow differ: {differ.mean():.4f} of {differ.size}")


if __name__ == "__main__":
    main()
