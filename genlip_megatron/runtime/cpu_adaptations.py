"""Runtime adaptations that let megatron-core 0.16 train on CPU with the gloo backend.

Each adaptation is one function that patches one CUDA assumption and returns its undo.
`apply_cpu_adaptations()` (idempotent) runs in every rank before any model is built, only when the
device is CPU; `without_cpu_adaptation(name)` lifts one inside a `with` block (tests show each is
needed). Why each exists: docs/cpu.md. NOTE: private functions are patched, so 0.16.x only.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Callable, Iterator

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
    def undo() -> None:
        for each in reversed(undos):
            each()

    return undo


def check_mcore_version() -> None:
    """Fail early, with a clear message, on a megatron-core these patches were not written for."""
    from megatron.core import package_info

    if tuple(package_info.VERSION[:2]) != SUPPORTED_MCORE:
        raise RuntimeError(
            "genlip_megatron's CPU adaptations were written against megatron-core 0.16.x and patch "
            f"its private functions; found {package_info.__version__}. Install megatron-core==0.16.1 "
            "or re-check every call site patched in genlip_megatron/runtime/cpu_adaptations.py."
        )


def rng_streams_on_cpu_generator() -> Undo:
    """Keep megatron's named, forkable RNG streams on the CPU generator.

    Without it: `model_parallel_cuda_manual_seed` raises (CudaRNGStatesTracker.add reads
    `torch.cuda.get_rng_state()`, which needs a driver), and `_set_cuda_rng_state` would only queue
    a lazy CUDA callback, so a fork would silently never switch streams.
    """
    from megatron.core.tensor_parallel import random as mp_random

    def add(self, name, seed):
        # Same bookkeeping as upstream (unique names and seeds), stream on the CPU generator.
        self._is_initialized = True
        if seed in self.seeds_:
            raise RuntimeError(f"seed {seed} already exists")
        if name in self.states_:
            raise RuntimeError(f"rng state {name} already exists")
        self.seeds_.add(seed)
        original = torch.get_rng_state()
        torch.default_generator.manual_seed(seed)
        self.states_[name] = torch.get_rng_state()
        torch.set_rng_state(original)

    def log_filter(record: logging.LogRecord) -> bool:
        # On CPU the forked streams ARE the CPU generator, so upstream's warning always fires.
        return "CPU RNG state changed within GPU RNG context" not in record.getMessage()

    random_logger = logging.getLogger(mp_random.__name__)
    random_logger.addFilter(log_filter)
    undos = [
        _patch(mp_random, "_get_cuda_rng_state", lambda *_, **__: torch.get_rng_state()),
        _patch(mp_random, "_set_cuda_rng_state", lambda state, *_, **__: torch.set_rng_state(state)),
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
    undos = [_patch(torch.cuda, "current_device", lambda: cpu)]
    undos += [_patch(torch.cuda, name, lambda *_, **__: None) for name in ("synchronize", "empty_cache")]
    return _undo_all(undos + [_patch(torch.Tensor, "cuda", lambda self, *_, **__: self)])


def _names_cuda(device: object) -> bool:
    if isinstance(device, (str, torch.device)):
        return str(device).startswith("cuda")
    return isinstance(device, int) and not isinstance(device, bool)  # a bare int is a CUDA ordinal


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
    NOTE: the mode sits on this thread's mode stack, so undo it in LIFO order with later modes.
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

    return _patch(WrappedTorchNorm, "__new__", new)


def _run_with_cuda_type_names(function: Callable) -> Callable:
    """`function`, during which `Tensor.type()` of a CPU tensor answers with the CUDA type name."""
    original_type = torch.Tensor.type

    def type_(self, dtype=None, non_blocking=False, **kwargs):
        name = original_type(self, dtype, non_blocking, **kwargs)
        if dtype is None and isinstance(name, str) and name.startswith("torch.") and "cuda" not in name:
            return "torch.cuda." + name[len("torch.") :]
        return name

    def wrapper(*args, **kwargs):
        torch.Tensor.type = type_
        try:
            return function(*args, **kwargs)
        finally:
            torch.Tensor.type = original_type

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
    while no Adam state exists yet; copying the loaded shards raises KeyError 'step' (the torch-Adam
    state has a `step` that the checkpointed param state leaves out on purpose); and, silently,
    `load_state_dict` gives every param the SAME `step` tensor, which Adam then increments once per
    param per step (step 1 -> 30 after resume: wrong bias correction).
    Fresh zero state with step 0 is exactly what torch Adam would create on its first step.
    """
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    original_state_dict = DistributedOptimizer.state_dict
    original_load = DistributedOptimizer.load_state_dict
    original_set_states = DistributedOptimizer._set_main_param_and_optimizer_states

    def state_dict(self):
        for param, state in _torch_adam_states(self.optimizer):
            if "step" not in state:  # never stepped (state may hold init_state_fn's zero moments)
                for moment in ("exp_avg", "exp_avg_sq"):
                    state.setdefault(moment, torch.zeros_like(param))
                state["step"] = torch.tensor(0.0)
        return original_state_dict(self)

    def set_states(self, model_param, tensors):
        # `step` comes from the param groups (load_state_dict), not from the per-param shards.
        group_index, group_order = self.model_param_group_index_map[model_param]
        state = self.optimizer.state[self.optimizer.param_groups[group_index]["params"][group_order]]
        step = state.pop("step", None) if "step" not in tensors else None
        try:
            original_set_states(self, model_param, tensors)
        finally:
            if step is not None:
                state["step"] = step

    def load_state_dict(self, state_dict):
        original_load(self, state_dict)
        for _, state in _torch_adam_states(self.optimizer):
            if "step" in state:
                state["step"] = state["step"].clone()

    patches = {"state_dict": state_dict, "load_state_dict": load_state_dict}
    patches["_set_main_param_and_optimizer_states"] = set_states
    return _undo_all([_patch(DistributedOptimizer, name, fn) for name, fn in patches.items()])


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


@contextlib.contextmanager
def without_cpu_adaptation(name: str) -> Iterator[None]:
    """Lift one applied adaptation inside the block (for tests that show it is needed).

    The adaptations applied after it are lifted and re-applied too, keeping undo order LIFO.
    """
    if name not in _applied:
        raise KeyError(f"{name} is not applied; applied: {list(_applied)}")
    names = list(_applied)
    later = names[names.index(name) :]
    for lifted in reversed(later):
        _applied.pop(lifted)()
    try:
        yield
    finally:
        for restored in later:  # registry order, so the registry stays in application order
            _applied[restored] = ADAPTATIONS[restored]()
