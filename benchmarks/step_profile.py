"""Where the CPU time of one training step goes: a full-ACFL step and an hng joint step (issue 28, item 6).

The steps are ``benchmarks/compile.py``'s eager ``full`` and ``hng`` variants (``Trainer.train_step`` on fixed
batches, MobileNetV2 128x64, batch 64, a memory of random unit features; hng at epoch hng.warmup_epochs, the first
joint epoch). Every phase is timed by wrapping the function that does it (nothing in ``src/`` changes); the time of
a phase is *exclusive*: what runs inside a nested phase is counted there (e.g. ``hpi.losses/ascent backward``).
Times are CPU seconds of this process (``time.process_time``) with one torch thread, so that the load of a busy
machine does not count; the median over steps of each phase, and of the whole step.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/step_profile.py --parts full,hng --steps 6
    # before/after a change: the same script against two checkouts, alternating
    for i in 1 2; do for src in /old/src src; do PYTHONPATH=$src python benchmarks/step_profile.py --steps 4; done; done
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import compile as bench  # noqa: E402


class Phases:
    """Exclusive CPU time per phase path (``outer/inner``) of the current step."""

    def __init__(self) -> None:
        self.stack: list[list[Any]] = []  # [path, start, child seconds]
        self.step: dict[str, float] = defaultdict(float)
        self.steps: list[dict[str, float]] = []

    def wrap(self, label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            path = f"{self.stack[-1][0]}/{label}" if self.stack else label
            self.stack.append([path, time.process_time(), 0.0])
            try:
                return fn(*args, **kwargs)
            finally:
                p, start, children = self.stack.pop()
                spent = time.process_time() - start
                self.step[p] += spent - children
                if self.stack:
                    self.stack[-1][2] += spent
        return timed

    def end_step(self) -> None:
        self.steps.append(dict(self.step))
        self.step = defaultdict(float)

    def medians(self) -> dict[str, float]:
        keys = sorted({k for s in self.steps for k in s})
        return {k: statistics.median(s.get(k, 0.0) for s in self.steps) for k in keys}


def instrument(trainer: Any, phases: Phases) -> None:
    """Wrap the phases of ``trainer``'s step (instance attributes and module globals; the classes are untouched
    except ``ReidModel.pool_and_embed``, ``torch.Tensor.backward`` and ``torch.autograd.grad``, wrapped for this
    process)."""
    import torch

    from hardreid.methods.generators import hpi
    from hardreid.models import batchnorm, reid

    method = trainer.method
    for c in method.components:
        c.losses = phases.wrap(f"{c.name}.losses", c.losses)
        c.before_step = phases.wrap(f"{c.name}.before_step", c.before_step)
        c.after_step = phases.wrap(f"{c.name}.after_step", c.after_step)
        if c.name == "hng" and getattr(c, "generator", None) is not None:
            c.generate = phases.wrap("generator forward", c.generate)
            c.discriminator_step = phases.wrap("D step", c.discriminator_step)
            c.generator_step = phases.wrap("G step", c.generator_step)
            c.discriminator.forward = phases.wrap("D forward", c.discriminator.forward)
            c.opt_g.step = phases.wrap("G adam", c.opt_g.step)
            c.opt_d.step = phases.wrap("D adam", c.opt_d.step)
    base = method.base
    base.logit_adjusters[:] = [phases.wrap(f"logit adjuster {getattr(a, '__self__', a).__class__.__name__}", a)
                               for a in base.logit_adjusters]
    hpi.hard_positive_instances = phases.wrap("ascent", hpi.hard_positive_instances)
    hpi.generation_forward = phases.wrap("batch statistics", hpi.generation_forward)
    torch.autograd.grad = phases.wrap("ascent backward", torch.autograd.grad)
    reid.ReidModel.pool_and_embed = phases.wrap("forward", reid.ReidModel.pool_and_embed)
    batchnorm.functional_call = phases.wrap("functional_call", batchnorm.functional_call)
    torch.Tensor.backward = phases.wrap("backward", torch.Tensor.backward)
    trainer.optimizer.step = phases.wrap("re-ID adam", trainer.optimizer.step)
    trainer.pool_and_embed = phases.wrap("base forward", trainer.pool_and_embed)
    method.training_step = phases.wrap("step", method.training_step)


def profile(part: str, steps: int, warmup: int) -> dict[str, Any]:
    import torch

    phases = Phases()
    step, _, model = bench.ours_variant(part, compiled=False)
    trainer = next(c.cell_contents for c in step.__closure__ if type(c.cell_contents).__name__ == "Trainer")
    for i in range(warmup):
        step(i)
    instrument(trainer, phases)
    totals = []
    for i in range(steps):
        start = time.process_time()
        step(warmup + i)
        totals.append(time.process_time() - start)
        phases.end_step()
    med = phases.medians()
    med["(rest of train_step)"] = max(0.0, statistics.median(totals) - sum(med.values()))
    return {"cpu_seconds_per_step": statistics.median(totals), "steps_cpu_s": totals, "phases_median_cpu_s": med,
            "torch_threads": torch.get_num_threads()}


def table(part: str, r: dict[str, Any]) -> str:
    lines = [f"{part}: {r['cpu_seconds_per_step']:.3f} CPU s/step (median of {len(r['steps_cpu_s'])})",
             "| phase (exclusive) | CPU s | share |", "|---|---:|---:|"]
    total = r["cpu_seconds_per_step"]
    for k, v in sorted(r["phases_median_cpu_s"].items(), key=lambda kv: -kv[1]):
        if v >= 0.0005:
            lines.append(f"| {k} | {v:.3f} | {100 * v / total:.0f}% |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--parts", default="full,hng", help="comma-separated, of full,hpi,hng,base (default full,hng)")
    p.add_argument("--steps", type=int, default=6, help="profiled steps per part (default 6)")
    p.add_argument("--warmup", type=int, default=2, help="unprofiled steps first (default 2)")
    p.add_argument("--smoke", action="store_true", help="toy sizes (batch 8 at 64x32): a check of this script")
    p.add_argument("--output", default=None, help="JSON result (default benchmarks/results/step_profile.json)")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    if args.smoke:
        bench.BATCH, bench.HEIGHT, bench.WIDTH = 8, 64, 32
        bench.SMOKE[:] = ["data.batch_size=8", "data.height=64", "data.width=32", "train.bn_chunk=4"]
    payload: dict[str, Any] = common.result_header("step_profile", argv)
    import hardreid

    payload["hardreid_src"] = str(Path(hardreid.__file__).parent)
    print(f"{common.cpu_model()}, 1 thread, load {common.load_average()}, src {payload['hardreid_src']}", flush=True)
    for part in args.parts.split(","):
        r = profile(part, args.steps, args.warmup)
        r["load_average"] = common.load_average()
        payload[part] = r
        print(table(part, r), flush=True)
    output = args.output or str(Path(__file__).resolve().parent / "results" / "step_profile.json")
    common.write_json(output, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
