"""Which (T, H, W) `mrope_section` values the interleaved MRoPE of GenLIP can honour.

Pure Python, no imports: shared by the run-config validator (which must not import torch) and the
Hugging Face config (copied into exported folders, which import only torch and transformers).

The interleaved rule (hf/rope.py) gives rotary frequency i (0 <= i < head_dim/2) the H position when
i % 3 == 1 and i < 3 * section_h, the W position when i % 3 == 2 and i < 3 * section_w, and the T
position otherwise. So the T count is never read, and the sections do NOT have to sum to head_dim/2
(official L/16: [8, 12, 12] with head_dim 72). What the rule needs: section_h H-slots and section_w
W-slots must exist below head_dim/2, i.e. section_h <= (head_dim/2 + 1) // 3 and
section_w <= (head_dim/2) // 3; otherwise the config promises frequencies the model cannot give.
"""


def mrope_section_problem(mrope_section, head_dim: int) -> str | None:
    """None when `mrope_section` suits the interleaved rule at `head_dim`, else why not (a phrase)."""
    if len(mrope_section) != 3 or any(not isinstance(s, int) or s < 0 for s in mrope_section):
        return "must be three non-negative counts (T, H, W)"
    half = head_dim // 2
    _, section_h, section_w = mrope_section
    for axis, count, room in (("H", section_h, (half + 1) // 3), ("W", section_w, half // 3)):
        if count > room:
            return (f"asks for {count} {axis} frequencies, but the interleaved rule finds only {room} "
                    f"among head_dim/2 = {half} (every third frequency, below 3 x {count})")
    return None
