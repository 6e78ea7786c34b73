"""GenLIP on megatron-core: one transformer over [image patches][text] with a prefix-LM mask.

"Let ViT Speak: Generative Language-Image Pre-training" (arXiv 2605.00809); architecture facts in
docs/sources.md and the batch contract in docs/batch.md. One instance is one pipeline stage
(or one virtual stage): the first stage embeds, the last applies ln_post -> proj -> lm_head and the
caption loss, every stage runs its slice of the blocks with interleaved MRoPE.

Differences from the reference, by design:
- the patch Conv2d is stored as a Linear [width, 3*P*P] (same numbers; the converter reshapes);
- the lm_head is vocabulary-parallel and the vocabulary is padded to a multiple of
  make_vocab_size_divisible_by x TP (padding rows never receive a label);
- DropPath drops a whole packed sequence, not one sample of it (see model/layer.py);
- in training, proj -> lm_head -> CE run on the loss positions only (model/lm_head.py): the other
  positions' logits are never computed (the reference computes them and masks their loss).
"""

from __future__ import annotations

import torch
from megatron.core import parallel_state, tensor_parallel
from megatron.core.transformer.enums import ModelType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_block import (
    TransformerBlock,
    TransformerBlockSubmodules,
    get_num_layers_to_build,
)

from genlip_megatron.hf.masks import prefix_lm_mask
from genlip_megatron.hf.rope import interleaved_mrope_freqs
from genlip_megatron.model.context_attention import ContextParallelParams
from genlip_megatron.model.embeddings import GenLIPEmbedding
from genlip_megatron.model.lm_head import full_cross_entropy, loss_position_cross_entropy
from genlip_megatron.model.specs import final_norm_spec, genlip_layer_spec
from genlip_megatron.model.varlen_attention import prefix_lm_spans
from genlip_megatron.model.vocab_padding import mask_vocab_padding


class GenLIPModel(MegatronModule):
    """One pipeline stage of GenLIP.

    Args:
        config: megatron-core TransformerConfig (see model/transformer_config.py).
        genlip: the ModelConfig section (patch size, vocab, rope, spec and attention choices).
        vocab_size: padded vocabulary size.
    """

    def __init__(self, config, genlip, vocab_size: int, pre_process: bool = True,
                 post_process: bool = True, vp_stage=None):
        super().__init__(config=config)
        self.model_type = ModelType.encoder_or_decoder  # what megatron-core's schedules look up
        # GenLIP's lm_head is untied from the embedding (finalize_model_grads asks).
        self.share_embeddings_and_output_weights = False
        self.genlip = genlip
        self.pre_process, self.post_process, self.vp_stage = pre_process, post_process, vp_stage
        self.vocab_size = vocab_size
        self.head_dim = config.kv_channels
        text_embed_dim = genlip.text_embed_dim or config.hidden_size
        if pre_process:
            self.embedding = GenLIPEmbedding(
                config, patch_dim=genlip.num_channels * genlip.patch_size ** 2,
                vocab_size=vocab_size, text_embed_dim=text_embed_dim)
        layer = genlip_layer_spec(genlip.layer_spec, genlip.attention,
                                  layer_scale_init=genlip.layer_scale_init,
                                  drop_path_rate=genlip.drop_path_rate,
                                  drop_path_schedule=genlip.drop_path_schedule)
        block = TransformerBlockSubmodules(
            layer_specs=[layer] * get_num_layers_to_build(config, vp_stage=vp_stage),
            layer_norm=final_norm_spec(genlip.layer_spec))
        # The block's final LayerNorm (last stage only) is GenLIP's ln_post.
        self.decoder = TransformerBlock(config, block, post_layer_norm=True,
                                        pre_process=pre_process, post_process=post_process,
                                        vp_stage=vp_stage)
        if post_process:
            self.proj = (torch.nn.Linear(config.hidden_size, text_embed_dim, bias=True)
                         if text_embed_dim != config.hidden_size else None)
            if self.proj is not None:
                with torch.no_grad():
                    config.output_layer_init_method(self.proj.weight)
                    self.proj.bias.zero_()
                # Under SP proj sees a different sequence slice per TP rank: sum its grads.
                for p in self.proj.parameters():
                    p.sequence_parallel = config.sequence_parallel
            self.output_layer = tensor_parallel.ColumnParallelLinear(
                text_embed_dim, vocab_size, config=config, init_method=config.init_method,
                bias=False, skip_bias_add=False, gather_output=False)

    def set_input_tensor(self, input_tensor) -> None:
        """Pipeline stages after the first receive their input from the previous stage."""
        if isinstance(input_tensor, (list, tuple)):
            input_tensor = input_tensor[0]
        self.decoder.set_input_tensor(input_tensor)

    def attention_inputs(self, position_ids, segment_ids, is_image, spans=None, context=None):
        """Rotary angles [S, B, 1, D], the attention mask (dense [B,1,S,S] or spans [K,3]) and, under
        context parallelism, the core attention's ContextParallelParams (else None).

        spans: the packed batch's sample spans (PackedBatch.spans); callers holding plain tensors
        may omit them and the fused path derives them from segment_ids.
        context: int64 [cp, B * S/cp], where every CP rank's positions sit in the micro-batch
        (data/context_split.ContextShard.positions); position_ids etc. are then this rank's
        [..., B, S/cp] and spans the whole micro-batch's."""
        freqs = interleaved_mrope_freqs(position_ids, self.head_dim, self.genlip.rope_theta,
                                        self.genlip.mrope_section)
        rotary = freqs.transpose(0, 1).unsqueeze(2).contiguous()
        if context is not None:
            if self.genlip.attention != "fused" or spans is None:
                raise ValueError("context parallelism needs model.attention=fused and the batch's spans")
            params = ContextParallelParams.build(context, parallel_state.get_context_parallel_rank(),
                                                 parallel_state.get_context_parallel_group())
            return rotary, spans, params
        if self.genlip.attention == "fused":
            return rotary, spans if spans is not None else prefix_lm_spans(segment_ids, is_image), None
        return rotary, prefix_lm_mask(segment_ids, is_image), None

    def forward(self, tokens, image_patches, is_image, position_ids, segment_ids, labels=None, spans=None,
                loss_mask=None, context=None):
        """On the last stage: with labels and loss_mask, fp32 per-token CE [B, S] computed on the
        loss positions only (0 elsewhere; model/lm_head.py); with labels alone, the head on every
        position (CE [B, S]); without labels, the logits [S, B, V/tp]. Other stages return the
        hidden stream [S, B, H] ([S/tp, B, H] under SP). Under context parallelism (`context`, see
        attention_inputs) S is this rank's S/cp positions throughout."""
        rotary, mask, params = self.attention_inputs(position_ids, segment_ids, is_image, spans, context)
        hidden = self.embedding(tokens, image_patches, is_image) if self.pre_process else None
        hidden = self.decoder(hidden_states=hidden, attention_mask=mask, rotary_pos_emb=rotary,
                              packed_seq_params=params)
        if not self.post_process:
            return hidden
        vocab = dict(real_vocab=self.genlip.vocab_size, padded_vocab=self.vocab_size, proj=self.proj)
        if labels is not None and loss_mask is not None:
            return loss_position_cross_entropy(hidden, labels, loss_mask, self.output_layer,
                                               sequence_parallel=self.config.sequence_parallel, **vocab)
        if labels is not None:
            return full_cross_entropy(hidden, labels, self.output_layer, **vocab)
        if self.proj is not None:
            hidden = self.proj(hidden)
        logits, _ = self.output_layer(hidden)  # [S, B, V/tp]; SP gathers the sequence here
        return mask_vocab_padding(logits, self.genlip.vocab_size, self.vocab_size)

    def features(self, tokens, image_patches, is_image, position_ids, segment_ids, spans=None):
        """Trunk features after ln_post, [S, B, H] (single-stage models)."""
        rotary, mask, _ = self.attention_inputs(position_ids, segment_ids, is_image, spans)
        hidden = self.embedding(tokens, image_patches, is_image)
        return self.decoder(hidden_states=hidden, attention_mask=mask, rotary_pos_emb=rotary)
