# GPU image for clusters: NGC PyTorch already ships CUDA, NCCL, Transformer Engine, apex and DALI,
# so only megatron-core and this package are added. Build and run (pyxis/enroot users pass the
# image to `genlip submit --container-image`):
#   docker build -t genlip-megatron .
#   docker run --gpus all --ipc=host genlip-megatron genlip train genlip_l16 data.manifest=/data/manifest.json
FROM nvcr.io/nvidia/pytorch:25.09-py3

WORKDIR /opt/genlip-megatron
COPY pyproject.toml README.md ./
COPY genlip_megatron ./genlip_megatron
COPY data_tools ./data_tools
COPY launch ./launch

# Keep the container's torch, TE, apex and DALI: install our remaining dependencies around them.
RUN pip install --no-cache-dir "megatron-core>=0.16.0,<0.17" psutil safetensors tokenizers \
        simplejpeg tensorboard \
 && pip install --no-cache-dir --no-deps -e .

ENV PYTHONUNBUFFERED=1 \
    CUDA_DEVICE_MAX_CONNECTIONS=1
CMD ["genlip", "--help"]
