"""``train.compile``: the re-ID network run through ``torch.compile`` (README, "Compiled training").

**What is compiled.** ``ReidModel.embed_chunk`` (backbone -> pooling -> neck of one BatchNorm group), which every
forward goes through: the training step (each ``train.bn_chunk`` group; under several processes inside DDP, the
"compile the inner module" pattern), camera-based BatchNorm's camera groups, HPI's gradients with respect to the
input pixels, hng's generated images, the EMA teachers of ICE and the mean teacher, and feature extraction for
clustering, evaluation and ``hardreid extract`` / ``index`` / ``search`` (no_grad / inference). hng's generator
and discriminator stay eager. What is compiled is the *unbound* function ``ReidModel.embed_chunk_eager`` (a plain
function whose first argument is the model), held by a :class:`CompiledEmbed` in the model's ``__dict__``, so

* the module tree is untouched: state dict keys stay plain (no ``_orig_mod.``), checkpoints of compiled and eager
  runs are the same files (a compiled run resumes eager and the other way round);
* ``copy.deepcopy(model)`` (an EMA teacher) shares the compiled function and runs its *own* weights (the model is
  an argument, not a closure over the original's);
* ``compile_model(model, False)`` switches back to eager; tracing / exporting (torch.jit, torch.export, ONNX) and
  an outer ``torch.compile`` always run the eager function.

**Shapes.** ``dynamic=None`` (automatic dynamic): a graph is first compiled for the shapes it meets; when a batch
size changes (extraction's last batch, camera groups) it is compiled once more with the batch dimension symbolic
and then serves every size, with no further recompilation each epoch. Training steps keep one shape (P x K
batches, equal ``bn_chunk`` groups), so they keep the graph specialised to it, which inductor makes faster on CPU
than a symbolic one; marking the batch dimension dynamic up front would give that up everywhere.
Each distinct situation (train / eval mode, with / without gradients, autocast, a teacher's frozen weights, input
pixels that require gradients, BatchNorm momentum 0 for the later ``bn_chunk`` groups) is an entry of its own in
dynamo's cache of the one function: ICE with hpf, hpi, hng and ``bn_chunk`` makes 9 on the tiny test set (its
extraction's batch size and a symbolic one, the student's and the teacher's train-mode groups with and without
gradients, the generator's images, ...), so :data:`RECOMPILE_LIMIT` raises dynamo's limit of 8 entries, past which
it would silently run new situations eager.

**Fallback, never a crash.** On a CPU, inductor needs a C++ compiler: when it would find none (it looks for
``$CXX``, else ``g++``: ``torch._inductor.config.cpp.cxx``) one warning line says so and the model runs eager. Any
exception while compiling or running the compiled function: one warning line (the exception's first line), the
model goes eager for good, and the call is redone eagerly (if the eager call fails too, that error is the model's
and is raised as it is). The backward graph is compiled together with the forward
(``torch._functorch.config.force_non_lazy_backward_lowering``), not lazily at the first ``backward()``, so a
failing backward compilation is caught here too; an error while *running* a compiled backward would still reach
the training step (none is known).

**Cache.** Inductor keeps compiled kernels on disk in ``TORCHINDUCTOR_CACHE_DIR``, which :func:`compile_model` sets
to ``train.compile_cache`` (default: ``$TORCHINDUCTOR_CACHE_DIR`` when the user set it, else
``${XDG_CACHE_HOME:-~/.cache}/hardreid/inductor``), so a second run of the same setting loads them instead of
compiling. Each compilation is logged (INFO) with its time and the cache's hits and misses.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from ..config import Config

LOG = logging.getLogger("hardreid")

#: torch.compile's backend: tests swap in "aot_eager" / "eager" (no C++ compiler, seconds instead of minutes)
BACKEND: str | Callable[..., Any] = "inductor"
#: dynamo's limit of compiled entries per function, raised to this (see the module docstring, "Shapes")
RECOMPILE_LIMIT = 64


def _counters() -> dict[str, Any]:
    from torch._dynamo.utils import counters

    return counters


def _snapshot() -> tuple[int, int, int]:
    """Dynamo's compiled frames and the on-disk caches' hits and misses (inductor's FX graph cache, AOT autograd's)."""
    c = _counters()
    hits = c["inductor"]["fxgraph_cache_hit"] + c["aot_autograd"]["autograd_cache_hit"]
    misses = c["inductor"]["fxgraph_cache_miss"] + c["aot_autograd"]["autograd_cache_miss"]
    return c["frames"]["total"], hits, misses


def _exporting() -> bool:
    """Traced, scripted, exported or inside an outer torch.compile: the eager function is what must be seen."""
    return (torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling()
            or torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export())


def _first_line(exc: BaseException) -> str:
    """``Type: first line`` of an exception; dynamo's wrappers (BackendCompilerFailed) also name what they wrap."""
    inner = getattr(exc, "inner_exception", None)
    text = (str(inner if inner is not None else exc).strip().splitlines() or [""])[0][:300]
    names = [type(exc).__name__] + ([type(inner).__name__] if inner is not None else [])
    return ": ".join(names + ([text] if text else []))


def missing_cpp_compiler() -> str | None:
    """Why inductor's CPU backend would find no C++ compiler, or None when it would (mirrors
    ``torch._inductor.cpp_builder.get_cpp_compiler``: ``torch._inductor.config.cpp.cxx`` holds ``$CXX`` or ``g++``,
    and None, a conda download done only with ``TORCH_INDUCTOR_INSTALL_GXX``; a name found on PATH is enough)."""
    from torch._inductor import config as inductor_config

    search = inductor_config.cpp.cxx if isinstance(inductor_config.cpp.cxx, (list, tuple)) else (inductor_config.cpp.cxx,)
    if None in search and os.getenv("TORCH_INDUCTOR_INSTALL_GXX"):
        return None
    names = [name for name in search if name]
    if any(shutil.which(name.split()[0]) for name in names):
        return None
    others = [name for name in ("c++", "clang++") if shutil.which(name)]
    hint = f"set CXX={others[0]}" if others else "install g++ or set CXX"
    return f"no C++ compiler found for inductor's CPU backend (looked for {', '.join(names) or 'g++'}; {hint})"


def default_cache_dir() -> Path:
    """``$TORCHINDUCTOR_CACHE_DIR`` when set, else ``${XDG_CACHE_HOME:-~/.cache}/hardreid/inductor``."""
    if os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
        return Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hardreid" / "inductor"


class CompiledEmbed:
    """``embed_chunk(model, x)`` through torch.compile, with the fallback to eager; one per ``compile_model`` call,
    shared by the model and its deep copies."""

    def __init__(self, function: Callable[..., Any], mode: str, backend: str | Callable[..., Any],
                 cache: Path | None) -> None:
        self.function, self.mode, self.backend, self.cache = function, mode, backend, cache
        # dynamic=None: automatic dynamic shapes (module docstring, "Shapes")
        self.compiled = torch.compile(function, mode=mode, backend=backend, dynamic=None)
        self.disabled: str | None = None  # why the compiled path is off for good
        self.cpu_checked = False
        self.calls = 0  # calls that ran the compiled function
        self.compilations: list[tuple[str, float]] = []  # (what, seconds) of each call that compiled

    def __deepcopy__(self, memo: dict[int, Any]) -> CompiledEmbed:
        return self  # stateless towards the model (the weights are an argument): a copy shares it

    def __reduce__(self) -> tuple[Any, ...]:  # a pickled model compiles again where it is loaded
        return CompiledEmbed, (self.function, self.mode, self.backend, self.cache)

    def disable(self, reason: str) -> None:
        self.disabled = reason
        LOG.warning("train.compile is off, the model runs eager: %s", reason)

    def __call__(self, model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.disabled is None and not self.cpu_checked and x.device.type == "cpu" and self.backend == "inductor":
            self.cpu_checked = True
            reason = missing_cpp_compiler()
            if reason:
                self.disable(reason)
        if self.disabled is not None or _exporting():
            return model.embed_chunk_eager(x)
        import torch._functorch.config as functorch_config

        before, start, failure = _snapshot(), time.perf_counter(), None
        try:
            with functorch_config.patch(force_non_lazy_backward_lowering=True):
                out = self.compiled(model, x)
        except Exception as exc:  # noqa: BLE001 - whatever the compiler raises, the model runs eager
            failure = exc
        if failure is not None:
            out = model.embed_chunk_eager(x)  # raises the model's own error, if it is not the compiler's
            self.disable(f"compiling failed ({_first_line(failure)})")
            return out
        self.calls += 1
        after = _snapshot()
        if after[0] > before[0]:
            self.log_compilation(model, x, time.perf_counter() - start, after[1] - before[1], after[2] - before[2])
        return out

    def log_compilation(self, model: torch.nn.Module, x: torch.Tensor, seconds: float, hits: int, misses: int) -> None:
        what = (f"{'training' if model.training else 'evaluation'} forward"
                f"{' + backward' if torch.is_grad_enabled() else ''}, batch {x.shape[0]}")
        self.compilations.append((what, seconds))
        cache = ("" if self.cache is None or self.backend != "inductor" else
                 f"; on-disk cache {self.cache}: " + ("used" if hits and not misses else "partly used" if hits
                                                      else "not used yet, kernels saved") + f" ({hits} hits, {misses} misses)")
        LOG.info("train.compile: compiled the re-ID network (%s, mode %s) in %.1f s%s", what, self.mode, seconds, cache)

    def summary(self) -> str:
        """Compilations so far, for the log (DEBUG, each epoch)."""
        c = _counters()
        return (f"train.compile: {len(self.compilations)} compilations of the re-ID network "
                f"({max(len(self.compilations) - 1, 0)} recompilations), {self.calls} compiled calls; dynamo: "
                f"{c['stats']['unique_graphs']} graphs, {sum(c['graph_break'].values())} graph breaks in this process"
                + (f"; off: {self.disabled}" if self.disabled else ""))


def compiled_embed(model: torch.nn.Module) -> CompiledEmbed | None:
    """The model's compiled forward, or None when it runs eager."""
    return model.__dict__.get("compiled_embed")


@contextlib.contextmanager
def eager(model: torch.nn.Module) -> Iterator[None]:
    """``model`` runs eager inside the block (BatchNorm calibration: its cumulative averages, momentum None, make
    dynamo break the graph at every BatchNorm; a once-per-run pass is not worth a compilation)."""
    held = model.__dict__.pop("compiled_embed", None)
    try:
        yield
    finally:
        if held is not None:
            model.__dict__["compiled_embed"] = held


def compile_model(model: torch.nn.Module, mode: bool | str, cache_dir: str | Path | None = None) -> torch.nn.Module:
    """``model`` (a ``ReidModel``) with ``embed_chunk`` compiled in ``mode`` (True = ``default``; False: back to
    eager); returns the same model. ``cache_dir``: inductor's on-disk cache (None / "": :func:`default_cache_dir`),
    set for the whole process and created here."""
    if mode is True:
        mode = "default"
    if not mode:
        model.__dict__.pop("compiled_embed", None)
        return model
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache.resolve())  # read by inductor at each compilation
    import torch._dynamo.config as dynamo_config

    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, RECOMPILE_LIMIT)
    model.__dict__["compiled_embed"] = CompiledEmbed(type(model).embed_chunk_eager, str(mode), BACKEND, cache)
    return model


def compile_from_config(model: torch.nn.Module, cfg: Config) -> torch.nn.Module:
    """``compile_model`` with ``train.compile`` and ``train.compile_cache``; with compile false the model is left as
    it is (a model built from the config is eager; one the caller compiled stays compiled)."""
    if not cfg.train.compile:
        return model
    return compile_model(model, cfg.train.compile, cfg.train.compile_cache)


__all__ = ["BACKEND", "CompiledEmbed", "compile_from_config", "compile_model", "compiled_embed", "default_cache_dir",
           "eager", "missing_cpp_compiler"]
