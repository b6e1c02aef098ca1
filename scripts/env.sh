# Sourced by ./pixelseq and scripts/test: makes sure torch 2.11.0 and tensorboard are installed in a
# virtual environment kept in a cache folder outside the checkout (shared by every clone and CI run
# on this machine; ~4.6 GB downloaded once), links it as .venv, and exports what tch's build needs.
TORCH_VERSION=2.11.0
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${PIXELSEQ_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pixelseq}"
venv="$cache/venv"

torch_ok() {
  "$venv/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null
}

if ! torch_ok; then
  mkdir -p "$cache"
  (
    flock 9
    if ! torch_ok; then
      echo "pixelseq: installing torch $TORCH_VERSION into $venv (once per machine)..." >&2
      python3 -m venv "$venv"
      "$venv/bin/pip" install --quiet --progress-bar off "torch==$TORCH_VERSION" >&2
    fi
  ) 9>"$cache/install.lock"
  torch_ok || { echo "pixelseq: torch $TORCH_VERSION could not be installed into $venv" >&2; exit 1; }
fi

# TensorBoard's own event reader, which the tests use to check the events files a run writes.
TENSORBOARD_VERSION=2.20.0
tensorboard_ok() {
  "$venv/bin/python" -c "import tensorboard, sys; sys.exit(tensorboard.__version__ != '$TENSORBOARD_VERSION')" 2>/dev/null
}

if ! tensorboard_ok; then
  (
    flock 9
    if ! tensorboard_ok; then
      echo "pixelseq: installing tensorboard $TENSORBOARD_VERSION into $venv (once per machine)..." >&2
      "$venv/bin/pip" install --quiet --progress-bar off "tensorboard==$TENSORBOARD_VERSION" >&2
    fi
  ) 9>"$cache/install.lock"
  tensorboard_ok || { echo "pixelseq: tensorboard $TENSORBOARD_VERSION could not be installed into $venv" >&2; exit 1; }
fi
# The CUDA C runtime and CCCL headers that NCCL's and CUDA's headers include, needed to compile
# c10d's NCCL backend header (csrc/dist_nccl.cpp); the wheels of torch's own CUDA 13.0 release
# (cuda-toolkit 13.0.2's pins), into a folder of their own: build.rs finds them here.
CUDA_HEADERS="nvidia-cuda-crt==13.0.88 nvidia-cuda-cccl==13.0.85"
cuda_headers="$cache/cuda-headers-13.0"
cuda_headers_ok() {
  [ -f "$cuda_headers/nvidia/cu13/include/crt/host_config.h" ] && [ -d "$cuda_headers/nvidia/cu13/include/nv" ]
}
if ! cuda_headers_ok; then
  mkdir -p "$cache"
  (
    flock 9
    if ! cuda_headers_ok; then
      echo "pixelseq: installing the CUDA 13.0 runtime headers into $cuda_headers (once per machine)..." >&2
      rm -rf "$cuda_headers.tmp"
      # shellcheck disable=SC2086
      "$venv/bin/pip" install --quiet --progress-bar off --no-deps --target "$cuda_headers.tmp" $CUDA_HEADERS >&2 &&
        rm -rf "$cuda_headers" && mv "$cuda_headers.tmp" "$cuda_headers"
    fi
    cuda_headers_ok || echo "pixelseq: the CUDA headers could not be installed; building without NCCL" >&2
  ) 9>"$cache/install.lock"
fi
export PIXELSEQ_CUDA_HEADERS="$cuda_headers"

if [ ! -e "$repo/.venv" ] || [ -L "$repo/.venv" ]; then
  ln -sfn "$venv" "$repo/.venv"
fi
export LIBTORCH_USE_PYTORCH=1
export PATH="$repo/.venv/bin:$PATH"
