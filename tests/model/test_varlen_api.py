"""The fused path's CUDA kernel needs torch's varlen_attn with `scale` and `window_size` (torch >= 2.11):
a torch without them is named in one line instead of failing inside a kernel call."""

import torch

from genlip_megatron.model import varlen_attention


def test_this_torch_has_the_varlen_api():
    varlen_attention.varlen_api_problem.cache_clear()
    assert varlen_attention.varlen_api_problem() is None


def test_an_older_varlen_api_is_refused_in_one_line(monkeypatch):
    import torch.nn.attention.varlen as varlen

    def old_varlen_attn(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal=False):
        raise AssertionError("never called")

    monkeypatch.setattr(varlen, "varlen_attn", old_varlen_attn)
    varlen_attention.varlen_api_problem.cache_clear()
    try:
        problem = varlen_attention.varlen_api_problem()
        assert problem and "\n" not in problem
        assert "scale or window_size" in problem and ">= 2.11" in problem and torch.__version__ in problem
        q = torch.zeros(4, 1, 8)
        cu = torch.tensor([0, 4], dtype=torch.int32)
        try:
            varlen_attention.varlen_attention_cuda(q, q, q, cu, cu, True, 1.0)
        except RuntimeError as exc:
            assert str(exc) == problem
        else:
            raise AssertionError("an old varlen API must be refused")
    finally:
        varlen_attention.varlen_api_problem.cache_clear()
