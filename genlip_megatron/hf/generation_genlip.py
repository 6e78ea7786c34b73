"""transformers' `generate()` for GenLIP: greedy (or any transformers decoding) captions with a KV cache.

    ids = model.generate(pixel_values=pixels, input_ids=prompt_ids, max_new_tokens=32)
    # ids: [B, prompt + new]; the caption is ids[:, prompt_ids.shape[1]:] up to eos

The first forward (prefill) runs the image patches and the prompt under the prefix-LM mask and fills
the cache (kv_cache.py); each later forward feeds one new text token, which sees every cached key,
at the text position after the previous one. What GenLIP adds to transformers' loop:
- text positions come from the prefill's `rope_deltas` (MRoPE: a text token sits after the image
  grid), so the 1-D `position_ids` transformers counts from 0 are dropped;
- the image is in the cache after the prefill, so `pixel_values` are fed to the prefill only.
Batched prompts of different lengths are left-padded with an `attention_mask`, as transformers wants.
"""

from __future__ import annotations

from transformers import GenerationMixin


class GenLIPGenerationMixin(GenerationMixin):
    """Hooks of transformers' generation loop for GenLIPModel (see the module docstring)."""

    def _prepare_model_inputs(self, inputs=None, bos_token_id=None, model_kwargs=None):
        """The prompt (input_ids) is what generation extends; the image rides to the prefill as a model
        kwarg (transformers would take the main input, pixel_values, as the sequence to extend)."""
        model_kwargs = dict(model_kwargs or {})
        if inputs is not None and inputs.is_floating_point():  # generate(pixels, input_ids=...)
            model_kwargs["pixel_values"], inputs = inputs, None
        prompt = inputs if inputs is not None else model_kwargs.pop("input_ids", None)
        if prompt is None or prompt.shape[-1] == 0:
            raise ValueError("GenLIP captions follow a prompt: pass its token ids as input_ids "
                             "(the training prompt is config.caption_prompt)")
        return prompt, "input_ids", model_kwargs

    def prepare_inputs_for_generation(self, input_ids, cache=None, attention_mask=None, pixel_values=None,
                                      rope_deltas=None, **kwargs):
        kwargs.pop("position_ids", None)  # positions follow from rope_deltas, not transformers' count
        prefill = cache is None or cache.get_seq_length() == 0
        if prefill and pixel_values is None:
            raise ValueError("GenLIP generates from an image: pass pixel_values (and the prompt as input_ids)")
        inputs = super().prepare_inputs_for_generation(input_ids, cache=cache, attention_mask=attention_mask,
                                                       **kwargs)
        inputs.pop("position_ids", None)
        if prefill:
            inputs["pixel_values"] = pixel_values
        else:
            inputs["rope_deltas"] = rope_deltas
        return inputs

    def _update_model_kwargs_for_generation(self, outputs, model_kwargs, is_encoder_decoder=False,
                                            num_new_tokens=1):
        model_kwargs = super()._update_model_kwargs_for_generation(outputs, model_kwargs, is_encoder_decoder,
                                                                   num_new_tokens)
        if getattr(outputs, "rope_deltas", None) is not None:
            model_kwargs["rope_deltas"] = outputs.rope_deltas
        return model_kwargs
