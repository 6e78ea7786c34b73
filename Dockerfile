# GPU image for clusters: NGC PyTorch already ships CUDA, NCCL, Transformer Engine, apex and DALI,
# so only megatron-core and this package are added. Build and run (pyxis/enroot users pass the
# image to `genlip submit --container-image`):
#   docker build -t genlip-megatron .
#   docker run --gpus all --ipc=host genlip-megatron genlip train genlip_l16 data.manifest=/data/manifest.json
# First thing on a new GPU: docker run --gpus all genlip-megatron python bench/gpu_check.py (docs/gpu_check.md).
#
# The base must ship torch >= 2.11: the fused attention calls torch.nn.attention.varlen.varlen_attn
# with `scale` and `window_size`, which torch 2.9/2.10 (NGC 25.09 .. 25.12) do not have. The build
# refuses a base without them (override with --build-arg BASE_IMAGE=...).
ARG BASE_IMAGE=nvcr.io/nvidia/pytorch:26.06-py3
FROM ${BASE_IMAGE}

WORKDIR /opt/genlip-megatron
COPY pyproject.toml README.md ./
COPY genlip_megatron ./genlip_megatron
COPY data_tools ./data_tools
COPY launch ./launch
COPY bench ./bench

# Keep the container's torch, TE, apex and DALI: install our remaining dependencies around them.
RUN pip install --no-cache-dir "megatron-core>=0.16.0,<0.17" psutil safetensors tokenizers \
        simplejpeg tensorboard scikit-learn matplotlib \
 && pip install --no-cache-dir --no-deps -e . \
 && python -c "import inspect, torch; from torch.nn.attention.varlen import varlen_attn; \
missing = {'scale', 'window_size'} - set(inspect.signature(varlen_attn).parameters); \
assert not missing, f'torch {torch.__version__} varlen_attn lacks {missing}: use a base with torch >= 2.11'"

ENV PYTHONUNBUFFERED=1 \
    CUDA_DEVICE_MAX_CONNECTIONS=1
CMD ["genlip", "--help"]
