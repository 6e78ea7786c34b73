"""Runtime adaptations that let megatron-core 0.16 train on CPU with the gloo backend.

megatron-core assumes CUDA in a handful of places. Each adaptation below is one small function that
patches one of them and returns a function that undoes the patch. `apply_cpu_adaptations()` applies
all of them (idempotent) and must run in every rank before any model or optimizer is built, and only
when the run's device is CPU: on GPU none of them is wanted. `without_cpu_adaptation(name)` lifts one
for the duration of a `with` block, so tests can show that each one is needed.

What was measured, and why each exists: ../shared/notes/megatron-core-on-cpu.md and docs/cpu.md.
NOTE: these touch private megatron-core functions, so the version is checked (0.16.x only).
"""

from __future__ import annotations

import contextlib
import copy
import logging
from typing import Callable, Iterator

import torch
from torch.overrides import TorchFunctionMode

SUPPORTED_MCORE = (0, 16)  # (major, minor); the call sites below were read from 0.16.1

Undo = Callable[[], None]


def _patch(owner: object, name: str, replacement: object) -> Undo:
    """Set `owner.name = replacement`; return a function that restores the original."""
    original = getattr(owner, name)
    setattr(owner, name, replacement)
    return lambda: setattr(owner, name, original)


def _undo_all(undos: list[Undo]) -> Undo:
    return lambda: [undo() for undo in reversed(undos)] and None


def check_mcore_version() -> None:
    """Fail early, with a clear message, on a megatron-core these patches were not written for."""
    from megatron.core import package_info

    if tuple(package_info.VERSION[:2]) != SUPPORTED_MCORE:
        raise RuntimeError(
            f"genlip_megatron's CPU adaptations were written against megatron-core "
            f"{SUPPORTED_MCORE[0]}.{SUPPORTED_MCORE[1]}.x and patch its private functions; found "
            f"{package_info.__version__}. Install megatron-core==0.16.1 or re-check every call site "
            f"listed in genlip_megatron/runtime/cpu_adaptations.py."
        )


class _DropCpuRngWarning(logging.Filter):
    """On CPU the tracked streams ARE the CPU generator, so 'CPU RNG state changed' is expected."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "CPU RNG state changed within GPU RNG context" not in record.getMessage()


def rng_streams_on_cpu_generator() -> Undo:
    """Keep megatron's named, forkable RNG streams on the CPU generator.

    Without it: `model_parallel_cuda_manual_seed` raises (CudaRNGStatesTracker.add reads
    `torch.cuda.get_rng_state()`, which needs a driver), and `_set_cuda_rng_state` would only queue
    a lazy CUDA callback, so a fork would silently never switch streams.
    """
    from megatron.core.tensor_parallel import random as mp_random

    def get_state(device=None, clone=False, graph_safe=False):
        return torch.get_rng_state()  # already a copy

    def set_state(new_state, device=-1, graph_safe=False):
        torch.set_rng_state(new_state)

    def add(self, name, seed):
        # Same bookkeeping as upstream (unique names and seeds), stream on the CPU generator.
        self._is_initialized = True
        if seed in self.seeds_:
            raise Exception(f"seed {seed} already exists")
        if name in self.states_:
            raise Exception(f"rng state {name} already exists")
        self.seeds_.add(seed)
        original = torch.get_rng_state()
        torch.default_generator.manual_seed(seed)
        self.states_[name] = torch.get_rng_state()
        torch.set_rng_state(original)

    log_filter = _DropCpuRngWarning()
    random_logger = logging.getLogger(mp_random.__name__)
    random_logger.addFilter(log_filter)
    undos = [
        _patch(mp_random, "_get_cuda_rng_state", get_state),
        _patch(mp_random, "_set_cuda_rng_state", set_state),
        _patch(mp_random.CudaRNGStatesTracker, "add", add),
        # The data-parallel ("default") stream is seeded with torch.cuda.manual_seed upstream.
        _patch(torch.cuda, "manual_seed", lambda seed: torch.default_generator.manual_seed(seed)),
        lambda: random_logger.removeFilter(log_filter),
    ]
    return _undo_all(undos)


def cuda_device_calls_on_cpu() -> Undo:
    """Answer megatron's `torch.cuda.current_device()` with the CPU; make sync/cache/.cuda() no-ops.

    Without it: ~60 call sites (tensor-parallel gathers, the grad buffer, p2p shape exchange, the
    optimizer's dummy tensors) raise 'Found no NVIDIA driver', and `torch.cuda.synchronize` raises in
    p2p communication and parallel_state.
    """
    cpu = torch.device("cpu")
    return _undo_all(
        [
            _patch(torch.cuda, "current_device", lambda: cpu),
            _patch(torch.cuda, "synchronize", lambda device=None: None),
            _patch(torch.cuda, "empty_cache", lambda: None),
            _patch(torch.Tensor, "cuda", lambda self, *args, **kwargs: self),
        ]
    )


def _names_cuda(device: object) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, str):
        return device.startswith("cuda")
    # A bare integer device means a CUDA ordinal to torch.
    return isinstance(device, int) and not isinstance(device, bool)


class CudaFactoriesOnCpu(TorchFunctionMode):
    """Rewrites `device="cuda"` (and `.to("cuda")`) in torch calls to the CPU."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if "device" in kwargs and _names_cuda(kwargs["device"]):
            kwargs = {**kwargs, "device": "cpu"}
        if func is torch.Tensor.to and len(args) > 1 and _names_cuda(args[1]):
            args = (args[0], "cpu", *args[2:])
        return func(*args, **kwargs)


def cuda_literal_factories_on_cpu() -> Undo:
    """Enter a TorchFunctionMode that maps literal `device="cuda"` tensor factories to the CPU.

    Without it: the default causal mask (transformer/utils.py), the pipeline schedules' token
    counter, the optimizer's found_inf/scale scalars and clip_grads' norm tensor raise.
    NOTE: the mode lives on this thread's torch-function mode stack, so it must be undone in LIFO
    order with any mode entered after it.
    """
    mode = CudaFactoriesOnCpu()
    mode.__enter__()
    return lambda: mode.__exit__(None, None, None)


def sequence_parallel_torch_norm() -> Undo:
    """Let `WrappedTorchNorm` (the norm without TE or apex) run under sequence parallelism.

    Without it: building any layer with `sequence_parallel=True` fails its assertion. Under SP each
    TP rank normalises a different slice of the sequence, so the norm's weight and bias only need
    `sequence_parallel=True` on them: finalize_model_grads then all-reduces their grads across TP.
    """
    from megatron.core.transformer.torch_norm import WrappedTorchNorm

    original_new = WrappedTorchNorm.__new__

    def new(cls, config, *args, **kwargs):
        if not config.sequence_parallel:
            return original_new(cls, config, *args, **kwargs)
        # A shallow copy skips TransformerConfig.__post_init__ validation; only the flag differs.
        plain = copy.copy(config)
        plain.sequence_parallel = False
        norm = original_new(cls, plain, *args, **kwargs)
        for param in norm.parameters():
            param.sequence_parallel = True
        return norm

    WrappedTorchNorm.__new__ = new
    return lambda: setattr(WrappedTorchNorm, "__new__", original_new)


@contextlib.contextmanager
def _cpu_types_named_as_cuda() -> Iterator[None]:
    """While active, `Tensor.type()` of a CPU float tensor answers with the CUDA type name."""
    original_type = torch.Tensor.type

    def type_(self, dtype=None, non_blocking=False, **kwargs):
        name = original_type(self, dtype, non_blocking, **kwargs)
        if dtype is None and isinstance(name, str) and name.startswith("torch.") and "cuda" not in name:
            return "torch.cuda." + name[len("torch.") :]
        return name

    torch.Tensor.type = type_
    try:
        yield
    finally:
        torch.Tensor.type = original_type


def _run_with_cuda_type_names(function: Callable) -> Callable:
    def wrapper(*args, **kwargs):
        with _cpu_types_named_as_cuda():
            return function(*args, **kwargs)

    return wrapper


def cpu_float_params_accepted() -> Undo:
    """Let CPU fp32/bf16 params pass megatron's `param.type() == 'torch.cuda.FloatTensor'` checks.

    Without it: DistributedOptimizer and Float16OptimizerWithFloat16Params raise TypeError ('Wrapped
    parameters must be one of torch.cuda.FloatTensor, ...') and clip_grads' assertion fails.
    NOTE: only the three functions holding the checks see the CUDA names, nothing else in torch.
    """
    from megatron.core.optimizer import clip_grads, distrib_optimizer, optimizer

    build = "_build_model_and_main_param_groups"
    dist_opt = distrib_optimizer.DistributedOptimizer
    original_build = dist_opt.__dict__[build]  # a classmethod (0.16.1): restore the descriptor itself
    fp16_opt = optimizer.Float16OptimizerWithFloat16Params
    clip = clip_grads.clip_grad_by_total_norm_fp32
    # Re-wrap in the same descriptor type (classmethod in 0.16.1) so `cls` is still passed.
    setattr(dist_opt, build, type(original_build)(_run_with_cuda_type_names(original_build.__func__)))
    undos = [
        lambda: setattr(dist_opt, build, original_build),
        _patch(fp16_opt, "__init__", _run_with_cuda_type_names(fp16_opt.__init__)),
        # optimizer.py imported the function by name, so both references are replaced.
        _patch(clip_grads, "clip_grad_by_total_norm_fp32", _run_with_cuda_type_names(clip)),
        _patch(optimizer, "clip_grad_by_total_norm_fp32", _run_with_cuda_type_names(clip)),
    ]
    return _undo_all(undos)


def _torch_adam_states(inner: torch.optim.Optimizer) -> Iterator[tuple[torch.Tensor, dict]]:
    if isinstance(inner, (torch.optim.Adam, torch.optim.AdamW)):
        for group in inner.param_groups:
            for param in group["params"]:
                yield param, inner.state[param]


def distributed_optimizer_torch_adam_load() -> Undo:
    """Make a fresh DistributedOptimizer (torch Adam, no TE/apex) load a checkpoint correctly.

    Without it, loading fails in three successive ways: `state_dict()` asserts `len(steps) == 1`
    while no Adam state exists yet; with exp_avg/exp_avg_sq but no step it raises KeyError 'step';
    and, silently, `load_state_dict` gives every param the SAME `step` tensor, which Adam then
    increments once per param per step (step 1 -> 30 after resume: wrong bias correction).
    Fresh zero state with step 0 is exactly what torch Adam would create on its first step.
    """
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    original_state_dict = DistributedOptimizer.state_dict
    original_load = DistributedOptimizer.load_state_dict

    def state_dict(self):
        for param, state in _torch_adam_states(self.optimizer):
            state.setdefault("exp_avg", torch.zeros_like(param))
            state.setdefault("exp_avg_sq", torch.zeros_like(param))
            state.setdefault("step", torch.tensor(0.0))
        return original_state_dict(self)

    def load_state_dict(self, state_dict):
        original_load(self, state_dict)
        for _, state in _torch_adam_states(self.optimizer):
            if "step" in state:
                state["step"] = state["step"].clone()

    return _undo_all(
        [
            _patch(DistributedOptimizer, "state_dict", state_dict),
            _patch(DistributedOptimizer, "load_state_dict", load_state_dict),
        ]
    )


# Applied in this order; undone in reverse (the torch-function mode must pop in LIFO order).
ADAPTATIONS: dict[str, Callable[[], Undo]] = {
    "rng_streams_on_cpu_generator": rng_streams_on_cpu_generator,
    "cuda_device_calls_on_cpu": cuda_device_calls_on_cpu,
    "cuda_literal_factories_on_cpu": cuda_literal_factories_on_cpu,
    "sequence_parallel_torch_norm": sequence_parallel_torch_norm,
    "cpu_float_params_accepted": cpu_float_params_accepted,
    "distributed_optimizer_torch_adam_load": distributed_optimizer_torch_adam_load,
}
_applied: dict[str, Undo] = {}


def apply_cpu_adaptations() -> None:
    """Apply every adaptation not yet applied in this process. Call only when the device is CPU."""
    check_mcore_version()
    for name, adapt in ADAPTATIONS.items():
        if name not in _applied:
            _applied[name] = adapt()


def remove_cpu_adaptations() -> None:
    """Undo every applied adaptation, newest first."""
    for name in reversed(list(_applied)):
        _applied.pop(name)()


def applied_cpu_adaptations() -> list[str]:
    return list(_applied)


@contextlib.contextmanager
def without_cpu_adaptation(name: str) -> Iterator[None]:
    """Lift one applied adaptation inside the block (for tests that show it is needed).

    The adaptations applied after it are lifted and re-applied too, keeping undo order LIFO.
    """
    if name not in _applied:
        raise KeyError(f"{name} is not applied; applied: {applied_cpu_adaptations()}")
    names = list(_applied)
    later = names[names.index(name) :]
    for lifted in reversed(later):
        _applied.pop(lifted)()
    try:
        yield
    finally:
        for restored in later:  # registry order, so the registry stays in application order
            _applied[restored] = ADAPTATIONS[restored]()
