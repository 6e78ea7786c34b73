"""AIMv2 on megatron-core: a prefix-attention ViT encoder and a causal multimodal decoder.

"Multimodal Autoregressive Pre-training of Large Vision Encoders" (arXiv 2411.14402); facts in
docs/sources.md, design and verification in docs/aimv2.md. One instance is one pipeline stage:

    encoder stage: image patches -> compact stream [Si, B] -> patch embedding -> encoder blocks
                   (random-prefix mask) -> RMSNorm -> projection to the decoder width, scattered
                   with the caption's token embeddings into the decoder stream [S, B, Hd]
    decoder stage: decoder blocks (causal per sample) -> RMSNorm -> pixel head (next patch) and
                   text head (next token)

Pipeline layouts: PP=1 (both parts on every rank) or PP=2 (stage 0 = encoder, stage 1 = decoder),
no virtual pipeline. Megatron's schedules send [S, B, config.hidden_size] between stages, and the
encoder stage already emits decoder-width activations, so `config` (the stage config) has the
decoder width. TP and SP apply to both blocks.

Differences from the plain-torch reference (hf/aimv2_reference.py), by design:
- the patch Conv2d is a Linear [W, 3*P*P]; the text head is vocabulary-parallel over a vocabulary
  padded to a multiple of make_vocab_size_divisible_by x TP (padding logits are -inf);
- the encoder runs on the compact image stream instead of the whole packed sequence (same maths:
  the reference's text positions are inert in its encoder).
"""

from __future__ import annotations

import torch
from megatron.core import parallel_state, tensor_parallel
from megatron.core.transformer.enums import ModelType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_block import TransformerBlock, TransformerBlockSubmodules

from genlip_megatron.hf.aimv2_reference import (
    causal_sample_allowed,
    encoder_prefix_allowed,
    next_patch_targets,
)
from genlip_megatron.hf.rope import interleaved_mrope_freqs
from genlip_megatron.model.aimv2_embeddings import AIMv2PatchEmbedding, compact_images
from genlip_megatron.model.aimv2_specs import aimv2_layer_spec, final_rms_norm_spec
from genlip_megatron.model.lm_head import full_cross_entropy, loss_position_cross_entropy
from genlip_megatron.model.vocab_padding import mask_vocab_padding


def check_aimv2_layout(pipeline: int, virtual_pipeline) -> None:
    if pipeline not in (1, 2) or virtual_pipeline is not None:
        raise ValueError(f"AIMv2 supports parallel.pipeline_model_parallel_size 1 or 2 (encoder | "
                         f"decoder) without virtual pipeline; got {pipeline} x {virtual_pipeline}")


class AIMv2Model(MegatronModule):
    """One pipeline stage of AIMv2.

    Args:
        config, encoder_config, decoder_config: from model/aimv2_specs.aimv2_transformer_configs.
        aimv2: the ModelConfig section. vocab_size: padded vocabulary size.
    """

    def __init__(self, config, encoder_config, decoder_config, aimv2, vocab_size: int,
                 pre_process: bool = True, post_process: bool = True, vp_stage=None):
        super().__init__(config=config)
        check_aimv2_layout(config.pipeline_model_parallel_size, vp_stage)
        if aimv2.attention != "dense":
            raise ValueError("AIMv2 needs model.attention=dense (the fused path is GenLIP's prefix-LM)")
        self.model_type = ModelType.encoder_or_decoder
        self.share_embeddings_and_output_weights = False  # the text head is untied
        self.aimv2, self.vocab_size = aimv2, vocab_size
        self.pre_process, self.post_process = pre_process, post_process
        self.input_tensor = None
        spec = aimv2_layer_spec(aimv2.layer_spec)
        norm = final_rms_norm_spec(aimv2.layer_spec)
        patch_dim = aimv2.num_channels * aimv2.patch_size ** 2
        if pre_process:
            self.patch_embedding = AIMv2PatchEmbedding(
                encoder_config, patch_dim=patch_dim, position_embedding=aimv2.aimv2_position_embedding,
                grid=aimv2.aimv2_image_size // aimv2.patch_size, eps=aimv2.layer_norm_eps)
            self.encoder = TransformerBlock(encoder_config, TransformerBlockSubmodules(
                layer_specs=[spec] * encoder_config.num_layers, layer_norm=norm), post_layer_norm=True)
            # Replicated plain Linear on the gathered (full) encoder output: complete grads per rank.
            self.projection = torch.nn.Linear(encoder_config.hidden_size, config.hidden_size, bias=False)
            self.word_embeddings = tensor_parallel.VocabParallelEmbedding(
                num_embeddings=vocab_size, embedding_dim=config.hidden_size,
                init_method=config.init_method, config=config, reduce_scatter_embeddings=False)
            with torch.no_grad():
                config.init_method(self.projection.weight)
        if post_process:
            self.decoder = TransformerBlock(decoder_config, TransformerBlockSubmodules(
                layer_specs=[spec] * decoder_config.num_layers, layer_norm=norm), post_layer_norm=True)
            self.pixel_head = torch.nn.Linear(config.hidden_size, patch_dim, bias=False)
            self.output_layer = tensor_parallel.ColumnParallelLinear(
                config.hidden_size, vocab_size, config=config, init_method=config.init_method,
                bias=False, skip_bias_add=False, gather_output=False)
            with torch.no_grad():
                config.output_layer_init_method(self.pixel_head.weight)

    def set_input_tensor(self, input_tensor) -> None:
        """The decoder stage of PP=2 receives the decoder stream from the encoder stage."""
        if isinstance(input_tensor, (list, tuple)):
            input_tensor = input_tensor[0]
        self.input_tensor = input_tensor

    def _gather_sequence(self, x):
        """[S/tp, B, H] -> [S, B, H] under SP. The consumer is replicated (identical on every TP
        rank), so the backward keeps this rank's slice instead of summing over ranks."""
        if not self.config.sequence_parallel:
            return x
        return tensor_parallel.gather_from_sequence_parallel_region(x, tensor_parallel_output_grad=False)

    def encode(self, image_patches, is_image, position_ids, segment_ids, image_prefix):
        """Encoder features after its final RMSNorm: ([Si, B, W] full sequence, CompactImages)."""
        tp = parallel_state.get_tensor_model_parallel_world_size() if self.config.sequence_parallel else 1
        c = compact_images(is_image, segment_ids, position_ids, image_prefix, multiple=tp)
        dtype = self.patch_embedding.patch_embedding.weight.dtype
        patches = image_patches.new_zeros(*c.valid.shape, image_patches.shape[-1], dtype=dtype)
        patches = patches.masked_scatter(c.valid[..., None], image_patches.to(dtype))
        x = self.patch_embedding(patches, c.rows, c.cols).transpose(0, 1).contiguous()  # [Si, B, W]
        if self.config.sequence_parallel:
            x = tensor_parallel.scatter_to_sequence_parallel_region(x)
        mask = ~encoder_prefix_allowed(c.segment_ids, c.valid, c.prefix)
        return self._gather_sequence(self.encoder(hidden_states=x, attention_mask=mask)), c

    def decoder_input(self, tokens, image_patches, is_image, position_ids, segment_ids, image_prefix):
        """The decoder stream [S, B, Hd] (or [S/tp, B, Hd] under SP): projected image features at
        image positions, token embeddings elsewhere."""
        features, c = self.encode(image_patches, is_image, position_ids, segment_ids, image_prefix)
        image = self.projection(features).transpose(0, 1)[c.valid]  # [N, Hd], sequence order
        text = self.word_embeddings(tokens)  # [B, S, Hd], summed over TP ranks
        placed = torch.zeros_like(text).masked_scatter(is_image[..., None], image.to(text.dtype))
        # torch.where (not addition) so image positions send no gradient to token 0's embedding.
        x = torch.where(is_image[..., None], placed, text).transpose(0, 1).contiguous()
        if self.config.sequence_parallel:
            x = tensor_parallel.scatter_to_sequence_parallel_region(x)
        return x

    def forward(self, tokens, image_patches, is_image, position_ids, segment_ids, labels=None,
                image_prefix=None, loss_mask=None):
        """Returns, on the decoder stage: with labels, float32 [2, B, S] = (per-token text CE,
        per-position pixel MSE, 0 where no pixel target); the text head and its CE run on the
        loss_mask positions only when loss_mask is given (model/lm_head.py; CE 0 elsewhere), on
        every position otherwise. Without labels: (logits [S, B, V/tp], pixels [S, B, 3*P*P]).
        On the encoder stage of PP=2: the decoder stream.
        image_prefix None means full encoder attention (evaluation) and no pixel loss."""
        if image_prefix is None:
            image_prefix = is_image
        if self.pre_process:
            hidden = self.decoder_input(tokens, image_patches, is_image, position_ids, segment_ids,
                                        image_prefix)
        else:
            hidden = self.input_tensor
        if not self.post_process:
            return hidden
        heads = self.config.num_attention_heads
        freqs = interleaved_mrope_freqs(position_ids, self.config.hidden_size // heads,
                                        self.aimv2.rope_theta, self.aimv2.decoder_mrope_section)
        hidden = self.decoder(hidden_states=hidden, attention_mask=~causal_sample_allowed(segment_ids),
                              rotary_pos_emb=freqs.transpose(0, 1).unsqueeze(2).contiguous())
        pixels = self.pixel_head(self._gather_sequence(hidden))  # [S, B, 3*P*P]
        vocab = dict(real_vocab=self.aimv2.vocab_size, padded_vocab=self.vocab_size)
        if labels is None:
            logits, _ = self.output_layer(hidden)  # [S, B, V/tp]; SP gathers the sequence here
            return mask_vocab_padding(logits, **vocab), pixels
        if loss_mask is not None:
            ce = loss_position_cross_entropy(hidden, labels, loss_mask, self.output_layer,
                                             sequence_parallel=self.config.sequence_parallel, **vocab)
        else:
            ce = full_cross_entropy(hidden, labels, self.output_layer, **vocab)
        targets, has = next_patch_targets(image_patches, is_image, segment_ids, image_prefix)
        mse = ((pixels.transpose(0, 1).float() - targets) ** 2).mean(-1) * has
        return torch.stack([ce, mse])

    def features(self, image_patches, is_image, position_ids, segment_ids):
        """Frozen-trunk features for probes: [B, Si, W] after the encoder's RMSNorm, full attention,
        and the bool [B, Si] of valid slots (encoder stage only)."""
        features, c = self.encode(image_patches, is_image, position_ids, segment_ids, is_image)
        return features.transpose(0, 1), c.valid


def build_aimv2_stage(cfg, stage_config, pre_process: bool, post_process: bool) -> AIMv2Model:
    """The training provider: this rank's AIMv2 stage (`stage_config` from aimv2_transformer_configs,
    the one DDP and the pipeline schedules see)."""
    from genlip_megatron.config.schema import padded_vocab_size
    from genlip_megatron.model.aimv2_specs import aimv2_transformer_configs

    _, encoder, decoder = aimv2_transformer_configs(cfg)
    padded = padded_vocab_size(cfg.model, cfg.parallel.tensor_model_parallel_size)
    return AIMv2Model(stage_config, encoder, decoder, cfg.model, padded, pre_process, post_process)
