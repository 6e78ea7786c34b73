"""The configuration tree: one dataclass per section, loaded from YAML (see docs/config.md).

Every key a run can set lives here with its default and its meaning. Nothing else in the package
reads environment variables or global arguments: launch code translates SLURM/torchrun variables
into these fields at the edge.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from genlip_megatron.objectives.registry import DEFAULT_OBJECTIVE


@dataclass
class ModelConfig:
    """GenLIP trunk and heads (docs/sources.md). Defaults are the L/16 preset."""

    objective: str = DEFAULT_OBJECTIVE  # a name of objectives/registry.py (docs/objectives.md)
    hidden_size: int = 1152
    num_layers: int = 24
    num_attention_heads: int = 16
    ffn_hidden_size: int = 2752  # SwiGLU hidden width
    patch_size: int = 16
    num_channels: int = 3
    text_embed_dim: Optional[int] = None  # None -> hidden_size (then in_proj / proj are identity)
    vocab_size: Optional[int] = None  # tokenizer vocabulary (before padding); null -> the dataset tokenizer's
    make_vocab_size_divisible_by: int = 128  # padded vocab = multiple of this x TP
    layer_norm_eps: float = 1e-6
    layer_scale_init: float = 0.1
    drop_path_rate: float = 0.1
    drop_path_schedule: str = "constant"  # "constant" (official: the rate in every layer) | "linear" (0 -> rate)
    rope_theta: float = 10000.0
    # (T, H, W) frequency counts of the interleaved MRoPE; only H and W are read (hf/mrope_sections.py)
    mrope_section: list[int] = field(default_factory=lambda: [8, 12, 12])
    init_method_std: float = 0.02
    layer_spec: str = "local"  # "local" (pure torch, CPU) | "te" (Transformer Engine, GPU, FP8)
    attention: str = "dense"  # "dense" (S x S bool mask; CPU reference) | "fused" (no S x S mask)
    recompute: str = "none"  # "none" | "selective" | "full"
    recompute_num_layers: int = 1  # layers per full-recompute chunk
    # AIMv2 only: the causal multimodal decoder (objectives/aimv2).
    decoder_hidden_size: int = 1024
    decoder_num_layers: int = 12
    decoder_num_attention_heads: int = 8
    decoder_ffn_hidden_size: int = 2816
    pixel_loss_weight: float = 0.4
    text_loss_weight: float = 1.0
    decoder_mrope_section: list[int] = field(default_factory=lambda: [16, 24, 24])  # sums to decoder head_dim/2
    aimv2_position_embedding: str = "learned"  # "learned" (table of (image_size/patch)^2) | "sincos" (native)
    aimv2_image_size: int = 224  # side of the learned position table, in pixels


@dataclass
class ParallelConfig:
    tensor_model_parallel_size: int = 1
    pipeline_model_parallel_size: int = 1
    virtual_pipeline_model_parallel_size: Optional[int] = None
    sequence_parallel: bool = False
    context_parallel_size: int = 1
    # CP splits every packed sequence into context_parallel_size x this many equal chunks and gives
    # each rank this many, balancing attention work (data/context_split.py; finer = better balance)
    context_parallel_chunks: int = 8
    use_distributed_optimizer: bool = True
    overlap_grad_reduce: bool = True
    overlap_param_gather: bool = False


@dataclass
class DataConfig:
    manifest: str = ""  # path to a dataset manifest.json written by `genlip shards merge`
    # Evaluation during training (training/held_out.py): the held-out caption loss of this dataset
    # (folder or manifest.json, the training tokenizer) every train.eval_interval steps.
    eval_manifest: str = ""
    # Optional, after the last step (training/end_of_run.py, needs checkpoint.dir): generative zero-shot
    # on eval_labelled (a captions JSONL with labels, docs/evaluation.md) with the class captions of
    # eval_zero_shot, and a linear probe fitted on eval_probe_train and tested on eval_labelled.
    eval_labelled: str = ""
    eval_zero_shot: str = ""
    eval_probe_train: str = ""
    image_size: int = 224  # stage 1: square images
    native_resolution: bool = False  # stage 2: aspect-preserving, multiples of patch_size
    min_pixels: int = 64 * 64
    max_pixels: int = 512 * 512
    random_resized_crop: bool = False
    crop_scale: list[float] = field(default_factory=lambda: [0.9, 1.0])
    seq_length: int = 16384  # tokens per packed sequence
    # Per-sample caps (docs/recipe.md). A sample longer than max_sample_tokens (image + prompt +
    # caption + end text; null = seq_length) is cut there, end text first, as the official code does
    # (stage 2: 4,096). A caption longer than max_caption_tokens (null = none, the official stage 1)
    # is cut and gets no end text: it never ended.
    max_sample_tokens: Optional[int] = None
    max_caption_tokens: Optional[int] = None
    prompt: str = "Describe the image in detail."
    end_text: str = "<|im_end|>\n"  # closes every caption, carries loss; tokenised without special tokens
    decoder_device: str = "cpu"  # DALI decoder placement: "cpu" | "mixed" (GPU nvJPEG)
    num_workers: int = 2  # DALI parallel external-source workers
    num_threads: int = 2  # DALI CPU threads
    seed: int = 1234
    max_bad_fraction: float = 0.001  # stop when more than this share of samples fail to decode


@dataclass
class OptimizerConfig:
    """AdamW (decoupled weight decay), megatron-core's (distributed) optimizer."""

    lr: float = 1e-3
    min_lr: float = 1e-6
    weight_decay: float = 0.01
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    clip_grad: float = 1.0
    # Which parameters weight decay applies to: "all" (official GenLIP: norms, biases, LayerScale,
    # embeddings and head too) | "megatron" (megatron-core's rule: none on biases and 1-D tensors).
    decay_params: str = "all"


@dataclass
class ScheduleConfig:
    train_iters: int = 33000
    warmup_fraction: float = 0.007
    decay_style: str = "cosine"  # "cosine" | "linear" | "constant"


@dataclass
class TrainConfig:
    micro_batch_size: int = 1  # packed sequences per micro-batch
    global_batch_size: int = 512  # packed sequences per optimizer step
    precision: str = "bf16"  # "fp32" | "bf16" | "fp8" (fp8 needs model.layer_spec == "te")
    device: str = "cuda"  # "cuda" | "cpu"
    seed: int = 1234
    eval_interval: int = 1000  # steps between held-out evaluations (data.eval_manifest); also after the last
    eval_iters: int = 10  # global batches of data.eval_manifest per evaluation; 0 = none
    eval_labelled_images: int = 1000  # end-of-run zero-shot / probe: first N images of each labelled JSONL
    max_consecutive_nan_steps: int = 5
    step_timeout_s: float = 1800.0  # watchdog: abort with a stack dump when a step exceeds this
    synthetic_data: bool = False  # deterministic random batches instead of data.manifest (tests, benchmarks)


@dataclass
class CheckpointConfig:
    dir: str = ""  # run directory: checkpoints, their marker, metrics (checkpoint/run_dir.py)
    save_interval: int = 1000
    keep_last: int = 3
    async_save: bool = False
    load: str = ""  # explicit checkpoint to start from (else auto-resume from dir/latest)
    finetune: bool = False  # load weights only (no optimizer, scheduler, sampler state)
    # Keys whose value may differ from the checkpoint's when resuming, each with a defined meaning
    # (training/resume_policy.py, docs/training.md "Resume"); any other difference is refused.
    allow_changes: list[str] = field(default_factory=list)


@dataclass
class LoggingConfig:
    log_interval: int = 10
    tensorboard_dir: str = ""  # "" -> <checkpoint.dir>/tensorboard
    wandb_project: str = ""  # set to log to Weights & Biases
    wandb_run_name: str = ""
    progress_bar: bool = True  # only when attached to a terminal, rank 0


@dataclass
class LaunchConfig:
    """SLURM submission by `genlip submit` (docs/launch.md); `genlip train` itself ignores it."""

    nodes: int = 1
    gpus_per_node: int = 8  # ranks per node; with train.device=cpu they are CPU processes, no GPU asked
    cpus_per_rank: int = 8  # CPU cores per rank (loader threads, DALI workers)
    time: str = "04:00:00"  # --time: minutes, H:MM:SS or D-HH:MM:SS
    partition: str = ""  # "" -> the cluster's default
    account: str = ""
    qos: str = ""
    job_name: str = "genlip"
    log_dir: str = ""  # "" -> <checkpoint.dir>/slurm; batch log, per-rank logs, rendered scripts
    launcher: str = "torchrun"  # "torchrun": one torchrun per node | "srun": one srun task per rank
    container_image: str = ""  # pyxis/enroot image (srun --container-image); exclusive with venv
    container_mounts: list[str] = field(default_factory=list)  # "src:dst"; run folders are added
    venv: str = ""  # virtual environment activated on every node; exclusive with container_image
    setup: str = ""  # site shell line run before launching, e.g. "module load cuda/12.8"
    signal_lead_s: int = 300  # USR1 this many seconds before the time limit: checkpoint, requeue
    max_requeues: int = 50  # stop requeueing after this many restarts (a crash loop is not progress)
    master_port: int = 0  # rendezvous port; 0 -> 20000 + job id mod 20000 (jobs sharing a node differ)
    env: list[str] = field(default_factory=list)  # "KEY=VALUE" site overrides of the NCCL/network defaults
    sbatch_args: list[str] = field(default_factory=list)  # extra #SBATCH options, e.g. "--exclusive"


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    launch: LaunchConfig = field(default_factory=LaunchConfig)


def padded_vocab_size(model: ModelConfig, tensor_parallel_size: int) -> int:
    """Vocabulary rounded up so every TP rank holds an equal, aligned slice of embedding and head."""
    if model.vocab_size is None:
        raise ValueError("model.vocab_size is unset: name a dataset (data.manifest) to take it from its "
                         "tokenizer, or set it")
    multiple = model.make_vocab_size_divisible_by * tensor_parallel_size
    return -(-model.vocab_size // multiple) * multiple


def head_dim(model: ModelConfig) -> int:
    return model.hidden_size // model.num_attention_heads
