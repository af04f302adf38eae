"""Eager against ``torch.compile`` on CPU, measured in one process (issue 25, items 6-7).

Every *variant* (a training step, a floor step or an extraction batch, eager or compiled, in a memory layout and a
precision) is built once, warmed up (the compiled ones compile on their first call: that call's time is reported),
then all variants run in alternating rounds (the order reversed every other round), so that the load of a busy
machine hits eager and compiled alike. Seconds per step are the median over rounds of each round's mean.

* ``floor``: plain torchvision MobileNetV2 (its ``features`` + global average pooling, the layers our
  ``ReidModel`` has before its BatchNorm neck), forward + backward of a fixed batch 64 x 3 x 128 x 64, no optimiser;
* ``cc``: our ``Trainer.train_step`` of Cluster Contrast (configs/cluster_contrast/cpu_official.yaml: batch 64, one
  BatchNorm chunk), a fixed batch, the memory filled with random unit features, Adam step and memory update included;
* ``base`` / ``hpf`` / ``hpi`` / ``full``: the same on configs/acfl/cpu_momentum_memory.yaml (BatchNorm over 2 x 32)
  with ``method.hard_samples`` = [] / [hpf] / [hpi] / [hpf, hpi] (the hard-sample study's mom_* rows);
* ``hng``: a joint step of configs/hng/cpu_study_momentum.yaml (epoch = hng.warmup_epochs: the warm-up is over);
* ``extract``: eval-mode features under ``torch.no_grad`` (as ``extract_features``), batch eval.batch_size (128):
  seconds per 1,000 images, ours and the floor's network;
* ``layout``: the floor and the cc step in the contiguous layout (the default is channels-last);
* ``bf16``: the floor and the cc step under bfloat16 autocast, eager and compiled;
* ``cache``: compile time cold (an empty inductor cache) and warm (a second process, same cache) of the cc step, and
  peak memory of the eager and compiled step, each in its own spawned process (``common.run_isolated``).

Ours is compiled through the config (``train.compile``, ``train.compile_cache``) where the schema has the key; on a
checkout without it, ``ReidModel.embed_chunk`` is wrapped with ``torch.compile`` here (what the key does), and the
result says which.

    PYTHONPATH=src python benchmarks/compile.py --parts floor,cc --rounds 3 --steps 3
    python benchmarks/compile.py --parts floor,cc,layout,bf16 --kernels avx2   # relaunches with ATEN_CPU_CAPABILITY=avx2
    TORCH_LOGS=recompiles,graph_breaks python benchmarks/compile.py --parts cc --rounds 1 --steps 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

common.repo_src_on_path()
REPO = Path(__file__).resolve().parents[1]
PARTS = ("floor", "cc", "base", "hpf", "hpi", "full", "hng", "extract", "layout", "bf16", "cache")
# The momentum-memory steps as issues 25 and 28 measured them (the verdict study's sets A and B): plain BatchNorm and the
# standard Jaccard distance, not the camera-aware CPU default (configs/camera_aware.yaml) those configs have since
# issue 26; the synthetic batches below are not drawn in the same-camera pairs camera BatchNorm needs.
PLAIN_BN = ["model.camera_bn=false", "cluster.jaccard=standard"]
OURS = {  # part -> (config, overrides)
    "cc": ("configs/cluster_contrast/cpu_official.yaml", []),
    "base": ("configs/acfl/cpu_momentum_memory.yaml", ["method.hard_samples=[]", *PLAIN_BN]),
    "hpf": ("configs/acfl/cpu_momentum_memory.yaml", ["method.hard_samples=[hpf]", *PLAIN_BN]),
    "hpi": ("configs/acfl/cpu_momentum_memory.yaml", ["method.hard_samples=[hpi]", *PLAIN_BN]),
    "full": ("configs/acfl/cpu_momentum_memory.yaml", PLAIN_BN),
    "hng": ("configs/hng/cpu_study_momentum.yaml", PLAIN_BN),
}
BATCH, HEIGHT, WIDTH, EVAL_BATCH = 64, 128, 64, 128  # the CPU configs' sizes (--smoke: 8, 64, 32, 16)
SMOKE: list[str] = []  # --smoke: config overrides to toy size
BACKEND = "inductor"  # --backend (aot_eager / eager: a check of this script in seconds, no timings worth reporting)
IMAGES, CLUSTERS = 4000, 250  # the memory's size (CUHK03's 7,365 training images cluster to a few hundred)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", default="floor,cc", help=f"comma-separated, of {','.join(PARTS)} (default floor,cc)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    p.add_argument("--steps", type=int, default=3, help="timed steps of every variant per round (default 3)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls before the rounds (the first compiles)")
    p.add_argument("--threads", type=int, default=1, help="torch threads; 0 = all usable cores (default 1)")
    p.add_argument("--kernels", choices=("default", "avx2"), default="default",
                   help="avx2: relaunch with ATEN_CPU_CAPABILITY=avx2 and ONEDNN_MAX_CPU_ISA=AVX2 (ATen's and "
                        "oneDNN's kernels and inductor's code: a CPU without AVX-512)")
    p.add_argument("--mode", default="default", help="torch.compile mode (default | reduce-overhead | max-autotune)")
    p.add_argument("--backend", default="inductor", help="torch.compile backend (aot_eager: a quick check of this script)")
    p.add_argument("--smoke", action="store_true", help="toy sizes (batch 8 at 64x32): a check of this script")
    p.add_argument("--cache-dir", default=None, help="inductor cache folder (default: a new empty one)")
    p.add_argument("--warm-cache", default=None, metavar="DIR",
                   help="cache part: skip the cold run and start the compiled cc step from this already filled "
                        "inductor cache (a folder a previous cache part left, e.g. /tmp/compile_bench_cache_*)")
    p.add_argument("--output", default=None, help="JSON result (default benchmarks/results/compile_<kernels>_t<threads>.json)")
    return p.parse_args(argv)


# --------------------------------------------------------------------------- variants


class Variant:
    """One timed thing: ``call(i)`` runs step ``i``; ``unit`` is what one call is (a step, or ``images`` images)."""

    def __init__(self, name: str, call: Callable[[int], Any], images: int = 0, info: dict[str, Any] | None = None):
        self.name, self.call, self.images, self.info = name, call, images, info or {}
        self.model: Any = None  # ours: the ReidModel (its train.compile log of compilations)
        self.warmup_s: list[float] = []
        self.rounds_s: list[float] = []
        self.rounds_cpu_s: list[float] = []  # CPU seconds of this process (all threads) per call

    def result(self) -> dict[str, Any]:
        med = statistics.median(self.rounds_s) if self.rounds_s else None
        cpu = statistics.median(self.rounds_cpu_s) if self.rounds_cpu_s else None
        out: dict[str, Any] = {"seconds_per_call": med, "cpu_seconds_per_call": cpu, "rounds_s": self.rounds_s,
                               "rounds_cpu_s": self.rounds_cpu_s, "warmup_calls_s": self.warmup_s, **self.info}
        if self.model is not None and compilations(self.model) is not None:
            out["train_compile_compilations"] = compilations(self.model)
        if self.images and med is not None:
            out["seconds_per_1000_images"] = med * 1000 / self.images
            out["cpu_seconds_per_1000_images"] = cpu * 1000 / self.images
        return out


def _layout(channels_last: bool):
    import torch

    return torch.channels_last if channels_last else torch.contiguous_format


def _autocast(bf16: bool):
    import contextlib

    import torch

    return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def floor_variant(compiled: bool, channels_last: bool = True, bf16: bool = False, mode: str = "default",
                  inference: bool = False) -> Callable[[int], Any]:
    """torchvision MobileNetV2's features + average pooling: forward + backward (or eval forward)."""
    import torch
    from torch import nn
    from torchvision.models import mobilenet_v2

    torch.manual_seed(0)
    fmt = _layout(channels_last)
    net = nn.Sequential(mobilenet_v2().features, nn.AdaptiveAvgPool2d(1), nn.Flatten()).to(memory_format=fmt)
    batch = EVAL_BATCH if inference else BATCH
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(batch, 3, HEIGHT, WIDTH, generator=g).contiguous(memory_format=fmt) for _ in range(2)]
    target = torch.randn(batch, 1280, generator=g)
    fwd = torch.compile(net, mode=_mode(mode), backend=BACKEND) if compiled else net
    if inference:
        net.eval()

        def infer(i: int) -> None:
            with torch.no_grad(), _autocast(bf16):
                fwd(xs[i % 2])
        return infer
    net.train()

    def step(i: int) -> None:
        with _autocast(bf16):
            out = fwd(xs[i % 2])
        loss = (out.float() * target).sum()
        net.zero_grad(set_to_none=True)
        loss.backward()
    return step


def has_compile_key() -> bool:
    from hardreid.config import Config

    return "compile" in type(Config().train).model_fields


def ours_config(part: str, compiled: bool, channels_last: bool, bf16: bool, mode: str, cache_dir: str):
    from hardreid.config import load_config

    path, overrides = OURS[part]
    sets = overrides + ["train.device=cpu", "data.workers=0", "train.seed=0", "model.pretrained=false",
                        "model.weights=", f"train.channels_last={str(channels_last).lower()}", "hng.pictures=0", *SMOKE]
    if bf16:
        sets += ["train.amp=true", "train.amp_cpu=true", "train.amp_dtype=bfloat16"]
    via = "eager"
    if compiled and has_compile_key():
        from hardreid.config import Config

        sets.append(f"train.compile={'true' if mode == 'default' else mode}")
        if "compile_cache" in type(Config().train).model_fields:
            sets.append(f"train.compile_cache={cache_dir}")
        via = "train.compile"
    elif compiled:
        via = "fallback: torch.compile(model.embed_chunk) in the benchmark"
    return load_config(str(REPO / path), sets), via


def _fallback_compile(model, mode: str) -> None:
    import torch

    model.embed_chunk = torch.compile(model.embed_chunk, mode=_mode(mode), backend=BACKEND)


def _mode(mode: str) -> str | None:
    return None if BACKEND != "inductor" else mode


def compile_ours(model, cfg, via: str, mode: str) -> None:
    """Compile ``model`` as ``train.compile`` does (a no-op where the Trainer has already done it)."""
    if via.startswith("fallback"):
        _fallback_compile(model, mode)
    elif via == "train.compile" and model.__dict__.get("compiled_embed") is None:
        from hardreid.models.compiled import compile_from_config

        compile_from_config(model, cfg)


def _set_backend(backend: str) -> None:
    global BACKEND
    BACKEND = backend
    try:
        from hardreid.models import compiled
    except ImportError:
        return
    compiled.BACKEND = backend


def compilations(model) -> list[Any] | None:
    """``(what, seconds)`` of each compilation ``train.compile`` logged for ``model`` (None: not compiled by it)."""
    compiled = model.__dict__.get("compiled_embed")
    return None if compiled is None else [[w, round(s, 1)] for w, s in getattr(compiled, "compilations", [])]


def fake_dataset():
    from hardreid.data.types import ReidDataset, Sample

    return ReidDataset("compile-benchmark", "(batches made in memory)",
                       [Sample(f"/nonexistent/{i % CLUSTERS:04d}_c{1 + i % 6}s1_{i:06d}.jpg", i % CLUSTERS, i % 6)
                        for i in range(IMAGES)])


def ours_variant(part: str, compiled: bool, channels_last: bool = True, bf16: bool = False, mode: str = "default",
                 cache_dir: str = "", tmp: Path | None = None) -> tuple[Callable[[int], Any], str, Any]:
    """``Trainer.train_step`` of ``part`` on two fixed batches (alternately), the memory and labels set as an epoch
    start would set them."""
    import torch
    import torch.nn.functional as F

    from hardreid.methods import Batch, EpochData
    from hardreid.training.trainer import Trainer

    cfg, via = ours_config(part, compiled, channels_last, bf16, mode, cache_dir)
    tmp = tmp or Path(tempfile.mkdtemp(prefix="compile_bench_"))
    trainer = Trainer(cfg, fake_dataset(), tmp / f"{part}_{compiled}_{channels_last}_{bf16}")
    if compiled:
        compile_ours(trainer.model, cfg, via, mode)
    epoch = cfg.hng.warmup_epochs if part == "hng" else 0
    g = torch.Generator().manual_seed(0)
    features = F.normalize(torch.randn(IMAGES, trainer.model.feat_dim, generator=g), dim=1)
    labels = torch.arange(IMAGES) % CLUSTERS
    trainer.method.start_epoch(EpochData(epoch, features, labels, torch.arange(IMAGES) % 6, CLUSTERS), trainer.model)
    trainer.model.train()
    batches = []
    for _ in range(2):
        ids = torch.randperm(CLUSTERS, generator=g)[: cfg.data.batch_size // cfg.data.num_instances]
        indices = (ids[:, None] + CLUSTERS * torch.arange(cfg.data.num_instances)[None, :]).flatten()
        shape = (cfg.data.batch_size, 3, HEIGHT, WIDTH)
        views = [torch.randn(shape, generator=g) for _ in range(trainer.method.num_views - 1)]
        batches.append(Batch(torch.randn(shape, generator=g), indices % CLUSTERS, indices % 6, indices, views))

    def step(i: int) -> None:
        trainer.train_step(batches[i % 2], epoch, i)
    return step, via, trainer.model


def extract_variant(compiled: bool, mode: str, cache_dir: str) -> tuple[Callable[[int], Any], str, Any]:
    """Our model's eval forward (L2-normalised features) under ``torch.no_grad``, batches of eval.batch_size."""
    import torch

    from hardreid.models import model_from_config

    cfg, via = ours_config("cc", compiled, True, False, mode, cache_dir)
    model = model_from_config(cfg).eval()
    if compiled:
        compile_ours(model, cfg, via, mode)
    g = torch.Generator().manual_seed(2)
    xs = [torch.randn(cfg.eval.batch_size, 3, HEIGHT, WIDTH, generator=g) for _ in range(2)]

    def infer(i: int) -> None:
        with torch.no_grad():
            model(xs[i % 2])
    return infer, via, model


def variant_specs(parts: list[str], args: argparse.Namespace, cache_dir: str) -> dict[str, tuple[Any, int]]:
    """name -> (builder, images per call) of every variant the parts need (built lazily, each once)."""
    specs: dict[str, tuple[Callable[[], tuple[Callable[[int], Any], str, Any]], int]] = {}

    def floor(compiled: bool, cl: bool = True, bf16: bool = False, inference: bool = False):
        return lambda: (floor_variant(compiled, cl, bf16, args.mode, inference),
                        "torch.compile(floor)" if compiled else "eager", None)

    def ours(part: str, compiled: bool, cl: bool = True, bf16: bool = False):
        return lambda: ours_variant(part, compiled, cl, bf16, args.mode, cache_dir)

    for c in (False, True):
        tag = "compiled" if c else "eager"
        specs[f"floor {tag}"] = (floor(c), 0)
        for part in OURS:
            specs[f"{part} {tag}"] = (ours(part, c), 0)
        specs[f"floor {tag} contiguous"] = (floor(c, cl=False), 0)
        specs[f"cc {tag} contiguous"] = (ours("cc", c, cl=False), 0)
        specs[f"floor {tag} bf16"] = (floor(c, bf16=True), 0)
        specs[f"cc {tag} bf16"] = (ours("cc", c, bf16=True), 0)
        specs[f"extract floor {tag}"] = (floor(c, inference=True), EVAL_BATCH)
        specs[f"extract ours {tag}"] = ((lambda c=c: extract_variant(c, args.mode, cache_dir)), EVAL_BATCH)
    return specs


def group_names(part: str, with_floor: bool) -> list[str]:
    """The variants timed together in the rounds of ``part`` (the floor's too where it was asked for)."""
    tags = ("eager", "compiled")
    floor = [f"floor {t}" for t in tags]
    if part == "floor":
        return floor
    if part in OURS:
        return (floor if with_floor else []) + [f"{part} {t}" for t in tags]
    if part in ("layout", "bf16"):
        suffix = "contiguous" if part == "layout" else "bf16"
        return [f"{k} {t}{extra}" for k in ("floor", "cc") for t in tags for extra in ("", f" {suffix}")]
    if part == "extract":
        return [f"extract {k} {t}" for k in ("floor", "ours") for t in tags]
    raise ValueError(part)


# --------------------------------------------------------------------------- measuring


def dynamo_counters() -> dict[str, Any]:
    from torch._dynamo.utils import counters

    return {"unique_graphs": counters["stats"].get("unique_graphs", 0),
            "graph_breaks": sum(counters["graph_break"].values()),
            "recompiles": sum(v for k, v in counters["recompiles"].items()) if "recompiles" in counters else None}


def warm_up(v: Variant, calls: int) -> None:
    before = dynamo_counters()
    for i in range(calls):
        t = time.perf_counter()
        v.call(i)
        v.warmup_s.append(time.perf_counter() - t)
    after = dynamo_counters()
    v.info["graphs_compiled_in_warmup"] = after["unique_graphs"] - before["unique_graphs"]
    v.info["graph_breaks_in_warmup"] = after["graph_breaks"] - before["graph_breaks"]


def time_round(v: Variant, steps: int, offset: int) -> None:
    t, cpu = time.perf_counter(), common._cpu_s()
    for i in range(steps):
        v.call(offset + i)
    v.rounds_s.append((time.perf_counter() - t) / steps)
    v.rounds_cpu_s.append((common._cpu_s() - cpu) / steps)


def ratio(a: dict[str, Any], b: dict[str, Any]) -> list[float | None]:
    """[wall-clock ratio, CPU-time ratio] of two variants' medians."""
    out: list[float | None] = []
    for key in ("seconds_per_call", "cpu_seconds_per_call"):
        x, y = a.get(key), b.get(key)
        out.append(round(x / y, 3) if x and y else None)
    return out


def ratios(results: dict[str, dict[str, Any]]) -> dict[str, list[float | None]]:
    """[wall, CPU] ratios: compiled / eager per row; ours / floor (eager and compiled); contiguous / channels-last; bf16 / fp32."""
    out: dict[str, list[float | None]] = {}
    for name, r in results.items():
        if " compiled" in name:
            eager = name.replace(" compiled", " eager")
            if eager in results:
                out[f"{name} / {eager}"] = ratio(r, results[eager])
    for tag in ("eager", "compiled"):
        floor = results.get(f"floor {tag}")
        for part in ("cc", "base", "hpf", "hpi", "full", "hng"):
            if floor and f"{part} {tag}" in results:
                out[f"{part} {tag} / floor {tag}"] = ratio(results[f"{part} {tag}"], floor)
        for kind in ("floor", "cc"):
            for suffix in ("contiguous", "bf16"):
                if f"{kind} {tag} {suffix}" in results and f"{kind} {tag}" in results:
                    out[f"{kind} {tag} {suffix} / {kind} {tag}"] = ratio(results[f"{kind} {tag} {suffix}"],
                                                                        results[f"{kind} {tag}"])
        if f"extract ours {tag}" in results and f"extract floor {tag}" in results:
            out[f"extract ours {tag} / extract floor {tag}"] = ratio(results[f"extract ours {tag}"],
                                                                    results[f"extract floor {tag}"])
    return out


def compile_seconds(results: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """First call minus a steady call: the compile time a compiled variant paid in this process."""
    out = {}
    for name, r in results.items():
        if " compiled" in name and r.get("warmup_calls_s") and r.get("seconds_per_call"):
            out[name] = round(r["warmup_calls_s"][0] - r["seconds_per_call"], 1)
    return out


# --------------------------------------------------------------------------- cache (isolated processes)


def _isolated_cc(compiled: bool, cache_dir: str, threads: int, mode: str, steps: int, backend: str) -> dict[str, Any]:
    """In a fresh process: build the cc step, time its first ``steps`` calls (the first compiles)."""
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache_dir
    import torch

    torch.set_num_threads(threads)
    _set_backend(backend)
    t = time.perf_counter()
    call, via, model = ours_variant("cc", compiled, mode=mode, cache_dir=cache_dir)
    build = time.perf_counter() - t
    calls, cpu_calls = [], []
    for i in range(steps):
        t, cpu = time.perf_counter(), common._cpu_s()
        call(i)
        calls.append(time.perf_counter() - t)
        cpu_calls.append(common._cpu_s() - cpu)
    return {"build_s": build, "calls_s": calls, "calls_cpu_s": cpu_calls, "compiled_via": via, **dynamo_counters(),
            "train_compile_compilations": compilations(model)}


def cache_part(args: argparse.Namespace, threads: int, save: Callable[[dict[str, Any]], None]) -> None:
    runs = (("eager", False), ("compiled cold cache", True), ("compiled warm cache", True))
    if args.warm_cache:  # only the second-process start, from a cache a previous run filled
        cache, runs = args.warm_cache, (runs[0], runs[2])
    else:  # empty: the first compiled run fills it, the second starts from it
        cache = tempfile.mkdtemp(prefix="compile_bench_cache_")
    out: dict[str, Any] = {"cache_dir": cache, "load_average_before": common.load_average()}
    for name, compiled in runs:
        print(f"cache: {name} (own process) ...", flush=True)
        r = common.run_isolated(_isolated_cc, compiled, cache, threads, args.mode, 3, args.backend)
        res = r["result"]
        res.update(peak_rss_mb=r["peak_rss_mb"], rss_start_mb=r["rss_start_mb"], wall_s=round(r["wall_s"], 1))
        res["first_call_minus_last_s"] = round(res["calls_s"][0] - res["calls_s"][-1], 1)
        out[name] = res
        save(out)
        print(f"  first call {res['calls_s'][0]:.1f} s, then {res['calls_s'][-1]:.2f} s/step, "
              f"peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)


# --------------------------------------------------------------------------- main


def relaunch_with_avx2(argv: list[str] | None) -> None:
    # ATen's own kernels and inductor's generated code follow ATEN_CPU_CAPABILITY; oneDNN's (convolutions) its own
    env = dict(os.environ, ATEN_CPU_CAPABILITY="avx2", ONEDNN_MAX_CPU_ISA="AVX2")
    args = [sys.executable, str(Path(__file__).resolve())] + (argv if argv is not None else sys.argv[1:])
    os.execve(sys.executable, args, env)


def table(results: dict[str, dict[str, Any]]) -> str:
    lines = [f"{'variant':<32} {'s/call':>8} {'cpu s':>7} {'s/1000 img':>11} {'first call s':>13} {'graphs':>6}"]
    for name, r in results.items():
        s, c = r.get("seconds_per_call"), r.get("cpu_seconds_per_call")
        per = r.get("seconds_per_1000_images")
        first = r["warmup_calls_s"][0] if r.get("warmup_calls_s") else None
        lines.append(f"{name:<32} {s if s is None else f'{s:.3f}':>8} {c if c is None else f'{c:.3f}':>7} {'' if per is None else f'{per:.2f}':>11} "
                     f"{'' if first is None else f'{first:.1f}':>13} {r.get('graphs_compiled_in_warmup', ''):>6}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.kernels == "avx2" and os.environ.get("ATEN_CPU_CAPABILITY") != "avx2":
        relaunch_with_avx2(argv)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise SystemExit(f"--parts: unknown {unknown}; choose from {','.join(PARTS)}")
    if args.warm_cache and not Path(args.warm_cache).is_dir():
        raise SystemExit(f"--warm-cache: {args.warm_cache} is not a folder; give the inductor cache a previous "
                         "--parts cache run left (its path is in that JSON's cache.cache_dir)")
    threads = args.threads or len(os.sched_getaffinity(0))
    if args.smoke:
        global BATCH, HEIGHT, WIDTH, EVAL_BATCH, IMAGES, CLUSTERS
        BATCH, HEIGHT, WIDTH, EVAL_BATCH, IMAGES, CLUSTERS = 8, 64, 32, 16, 400, 20
        SMOKE.extend(["data.batch_size=8", "data.height=64", "data.width=32", "eval.batch_size=16", "data.num_instances=4", "train.bn_chunk=0",
                      "hng.ngf=4", "hng.ndf=4"])
    cache_dir = args.cache_dir or tempfile.mkdtemp(prefix="compile_bench_cache_")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache_dir  # before inductor reads it: a cold cache unless --cache-dir
    import torch

    torch.set_num_threads(threads)
    _set_backend(args.backend)
    output = Path(args.output or REPO / "benchmarks" / "results" / f"compile_{args.kernels}_t{threads}.json")
    payload: dict[str, Any] = common.result_header("compile", argv)
    payload["settings"] = {"parts": parts, "rounds": args.rounds, "steps": args.steps, "warmup": args.warmup,
                           "threads": threads, "backend": args.backend, "smoke": args.smoke, "kernels": args.kernels, "mode": args.mode, "cache_dir": cache_dir,
                           "ATEN_CPU_CAPABILITY": os.environ.get("ATEN_CPU_CAPABILITY"),
                           "ONEDNN_MAX_CPU_ISA": os.environ.get("ONEDNN_MAX_CPU_ISA"),
                           "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                           "train_compile_key": has_compile_key(), "batch": f"{BATCH} x 3 x {HEIGHT} x {WIDTH}"}

    def save() -> None:
        payload["machine"]["load_average_1_5_15_at_save"] = common.load_average()
        payload["peak_rss_mb_whole_process"] = round(common.peak_rss_mb(), 1)
        common.write_json(output, payload)

    print(f"{common.cpu_model()}, capability {payload['settings']['cpu_capability']}, {threads} thread(s), "
          f"load {common.load_average()}, cache {cache_dir}", flush=True)
    specs = variant_specs(parts, args, cache_dir)
    built: dict[str, Variant] = {}
    payload["groups"] = {}
    for part in (p for p in parts if p != "cache"):
        names = group_names(part, "floor" in parts)
        for name in names:
            if name not in built:
                make, images = specs[name]
                print(f"build + warm-up: {name} ...", flush=True)
                call, via, model = make()
                v = built[name] = Variant(name, call, images, {"compiled_via": via})
                v.model = model
                warm_up(v, args.warmup)
                print(f"  calls {', '.join(f'{s:.1f}' for s in v.warmup_s)} s", flush=True)
        group = [built[n] for n in names]
        for v in group:
            v.rounds_s, v.rounds_cpu_s = [], []
        for r in range(args.rounds):
            for v in group if r % 2 == 0 else group[::-1]:
                time_round(v, args.steps, args.warmup + r * args.steps)
            results = {v.name: v.result() for v in group}
            payload["groups"][part] = {"variants": results, "ratios": ratios(results),
                                       "compile_seconds_in_process": compile_seconds(results),
                                       "counters_after_round": dynamo_counters(), "load_average": common.load_average()}
            save()
            print(f"{part}: round {r + 1}/{args.rounds} done, load {common.load_average()}", flush=True)
        print(table(payload["groups"][part]["variants"]))
        for k, x in payload["groups"][part]["ratios"].items():
            print(f"  {k}: wall {x[0]}, CPU {x[1]}")
    if "cache" in parts:
        def save_cache(out: dict[str, Any]) -> None:
            payload["cache"] = out
            save()
        cache_part(args, threads, save_cache)
    save()
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
