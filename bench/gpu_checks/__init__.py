"""The checks of bench/gpu_check.py, one module per kind: environment, numerics (attention kernels,
the head), layer specs (TE vs local), FP8 tracking, image decoding, and throughput. Each check is a
function ctx -> dict with "status" ("pass", "fail" or "skipped") and its numbers; see
bench/gpu_check.py for the context and the JSON."""
