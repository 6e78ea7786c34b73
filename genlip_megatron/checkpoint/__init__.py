"""Checkpoints: the run directory's layout (run_dir.py), sharded save/load with megatron-core
dist_checkpointing (sharded.py) and the megatron-free tensor reader (reader.py). Training, conversion
and evaluation all read and write checkpoints through this package."""
