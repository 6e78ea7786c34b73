"""genlip-megatron: pretrain GenLIP (and AIMv2) vision encoders with megatron-core."""

__version__ = "0.1.0"
