"""Reference hashes for pixelseq's grayscale conversion, computed by TensorFlow itself.

LRA made its Image task with `tf.image.rgb_to_grayscale` on uint8 CIFAR-10 images inside a
`tf.data` map. This script repeats that on the official binary files and prints:

- the sha256 of the export records (1 label byte + 1,024 grayscale bytes; the 50,000 training
  images in official order, then the 10,000 test images), the value pinned as TF_EXPORT_SHA256 in
  src/data/cli.rs, i.e. the sha256 of `pixelseq data export --task lra-image --out FILE`;
- the sha256 of the grayscale value of every colour (r, g, b), r-major, pinned as
  TF_ALL_COLOURS_SHA256 in src/data/gray.rs.

With `--compare FILE` it also compares FILE (a pixelseq export) with the TensorFlow records byte
for byte and prints how many pixels and labels differ.

Usage (TensorFlow in a throwaway venv outside the repository):
    python3 -m venv /tmp/tfvenv && /tmp/tfvenv/bin/pip install tensorflow-cpu
    /tmp/tfvenv/bin/python scripts/tf_gray_reference.py /path/to/cifar-10-batches-bin [--compare FILE]
"""

import argparse
import hashlib
import os

import numpy as np
import tensorflow as tf

FILES = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cifar_dir")
    ap.add_argument("--compare", metavar="FILE")
    args = ap.parse_args()

    recs = np.concatenate(
        [np.fromfile(os.path.join(args.cifar_dir, f), dtype=np.uint8).reshape(10000, 3073) for f in FILES]
    )
    labels = recs[:, 0]
    images = recs[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # (N, 32, 32, 3) as tfds gives them

    ds = tf.data.Dataset.from_tensor_slices(images).map(tf.image.rgb_to_grayscale).batch(1000)
    gray = np.concatenate([b.numpy() for b in ds]).reshape(-1, 1024)  # (N, 1024) raster order
    export = np.concatenate([labels[:, None], gray], axis=1).tobytes()
    print("tensorflow", tf.__version__)
    print("export sha256", hashlib.sha256(export).hexdigest())

    v = np.arange(256, dtype=np.uint8)
    cube = np.stack(np.meshgrid(v, v, v, indexing="ij"), -1).reshape(4096, 4096, 3)
    table = tf.image.rgb_to_grayscale(cube).numpy().reshape(-1)
    print("all colours sha256", hashlib.sha256(table.tobytes()).hexdigest())

    if args.compare:
        mine = np.fromfile(args.compare, dtype=np.uint8).reshape(-1, 1025)
        ref = np.frombuffer(export, dtype=np.uint8).reshape(-1, 1025)
        if mine.shape != ref.shape:
            print(f"{args.compare}: {mine.shape[0]} records, expected {ref.shape[0]}")
        else:
            print(f"{args.compare}: {int((mine[:, 1:] != ref[:, 1:]).sum())} pixels and "
                  f"{int((mine[:, 0] != ref[:, 0]).sum())} labels differ")


if __name__ == "__main__":
    main()
