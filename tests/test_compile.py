"""train.compile (models/compiled.py): the compiled re-ID forward, its fallbacks, its cache, plain checkpoints.

The default run swaps torch.compile's backend for a counting one (dynamo traces the real function, the graph runs
as traced: seconds, no C++ compiler) and uses a two-convolution backbone; the real inductor backend on MobileNetV2
for every base and generator is in the slow tests.
"""

from __future__ import annotations

import copy
import logging
import pickle

import pytest
import torch
from torch import nn

from conftest import tiny_config
from hardreid.config import Config, apply_dict
from hardreid.data.datasets import load_dataset
from hardreid.errors import UserError
from hardreid.models import BACKBONES, build_model
from hardreid.models import compiled as C
from hardreid.training.checkpoint import load_checkpoint
from hardreid.training.trainer import train


class CountingBackend:
    """A torch.compile backend that counts the graphs dynamo hands it and runs them as traced."""

    def __init__(self) -> None:
        self.graphs = 0

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list) -> object:
        self.graphs += 1
        return gm.forward


def _tiny_cnn(last_stride: int, size: tuple[int, int]) -> tuple[nn.Module, int]:
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU()), 16


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """No test writes into the user's cache folders; dynamo forgets what a test compiled; a tiny backbone."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "env-cache"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setitem(BACKBONES, "tiny_cnn", _tiny_cnn)
    yield
    torch._dynamo.reset()


@pytest.fixture
def counting(monkeypatch) -> CountingBackend:
    backend = CountingBackend()
    monkeypatch.setattr(C, "BACKEND", backend)
    return backend


@pytest.fixture
def log_lines():
    """What the hardreid logger says (it does not propagate once a run set up its log)."""
    lines: list[tuple[int, str]] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = lambda record: lines.append((record.levelno, record.getMessage()))
    logger = logging.getLogger("hardreid")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield lines
    logger.removeHandler(handler)
    logger.setLevel(level)


def _models(seed: int = 0) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    eager = build_model("tiny_cnn").use_channels_last(True)
    return eager, copy.deepcopy(eager)


def _warnings(lines: list[tuple[int, str]]) -> list[str]:
    return [text for level, text in lines if level >= logging.WARNING]


# --------------------------------------------------------------------------- the config keys

@pytest.mark.parametrize("value, mode", [(False, False), (True, "default"), ("false", False), ("yes", "default"),
                                         ("on", "default"), ("default", "default"), ("reduce-overhead", "reduce-overhead"),
                                         ("Max-Autotune", "max-autotune")])
def test_compile_key_takes_booleans_and_modes(value, mode):
    assert apply_dict(Config(), {"train": {"compile": value}}, "test").train.compile == mode
    assert Config().train.compile is False and Config().train.compile_cache == ""


@pytest.mark.parametrize("value, message", [
    ("max_autotune", "config key 'train.compile' in test must be false, true or a torch.compile mode (default, "
                     "reduce-overhead, max-autotune), got 'max_autotune'. Did you mean 'max-autotune'?"),
    (2, "config key 'train.compile' in test must be false, true or a torch.compile mode (default, reduce-overhead, "
        "max-autotune), got 2"),
    (None, "got None")])
def test_compile_key_refuses_anything_else_in_one_line(value, message):
    with pytest.raises(UserError) as info:
        apply_dict(Config(), {"train": {"compile": value}}, "test")
    assert message in str(info.value) and "\n" not in str(info.value)


def test_cache_folder_default_setting_and_creation(monkeypatch, tmp_path, counting):
    assert C.default_cache_dir() == tmp_path / "env-cache"  # the user's TORCHINDUCTOR_CACHE_DIR
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    assert C.default_cache_dir() == tmp_path / "xdg" / "hardreid" / "inductor"
    model, _ = _models()
    C.compile_model(model, True)  # the default: created, and where inductor will write
    assert (tmp_path / "xdg" / "hardreid" / "inductor").is_dir()
    assert C.compiled_embed(model).cache == tmp_path / "xdg" / "hardreid" / "inductor"
    C.compile_model(model, "max-autotune", tmp_path / "mine")
    assert (tmp_path / "mine").is_dir() and C.compiled_embed(model).mode == "max-autotune"
    import os

    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str((tmp_path / "mine").resolve())


# --------------------------------------------------------------------------- the compiled model

def test_compiled_model_gives_the_eager_features_gradients_and_plain_keys(counting):
    eager, model = _models()
    C.compile_model(model, True)
    x = torch.randn(8, 3, 32, 16)
    for m in (eager, model):
        m.train()
    pooled, emb = model.pool_and_embed(x)
    pooled_e, emb_e = eager.pool_and_embed(x)
    assert counting.graphs == 1 and C.compiled_embed(model).calls == 1  # the compiled path ran
    torch.testing.assert_close((pooled, emb), (pooled_e, emb_e))
    emb.square().sum().backward()
    emb_e.square().sum().backward()
    for p, q in zip(model.parameters(), eager.parameters()):
        torch.testing.assert_close(p.grad, q.grad)
    torch.testing.assert_close(model.state_dict(), eager.state_dict())  # running statistics too
    assert list(model.state_dict()) == list(eager.state_dict())  # no _orig_mod.
    model.eval(), eager.eval()
    with torch.no_grad():
        for batch in (8, 5, 3, 5):  # one recompilation with a dynamic batch dimension, then no more
            y = torch.randn(batch, 3, 32, 16)
            torch.testing.assert_close(model(y), eager(y))
    assert counting.graphs == 3
    restored = pickle.loads(pickle.dumps(model))  # a pickled compiled model loads and compiles again
    assert C.compiled_embed(restored) is not C.compiled_embed(model) and C.compiled_embed(restored).mode == "default"


def test_bn_chunk_camera_groups_and_input_gradients_go_through_the_compiled_forward(counting):
    from hardreid.models.camera_bn import per_camera_pool_and_embed

    eager, model = _models()
    for m in (eager, model):
        m.bn_chunk = 4
        m.train()
    C.compile_model(model, True)
    x = torch.randn(8, 3, 32, 16)
    torch.testing.assert_close(model.pool_and_embed(x), eager.pool_and_embed(x))  # two groups of 4
    torch.testing.assert_close(model.state_dict(), eager.state_dict())  # the running statistics of the first only
    cams = torch.tensor([0, 0, 1, 1, 1, 1, 0, 0])  # two of each camera in each bn_chunk group
    torch.testing.assert_close(per_camera_pool_and_embed(model, x, cams), per_camera_pool_and_embed(eager, x, cams))
    pixels, pixels_e = x.clone().requires_grad_(), x.clone().requires_grad_()  # HPI: gradients w.r.t. the input
    grad = torch.autograd.grad(model(pixels).sum(), pixels)[0]
    torch.testing.assert_close(grad, torch.autograd.grad(eager(pixels_e).sum(), pixels_e)[0])
    calls = C.compiled_embed(model).calls
    assert calls == 2 + 4 + 2  # every group went through the compiled function (cameras within each bn_chunk group)


def test_a_deep_copy_runs_its_own_weights_and_compile_can_be_switched_off(counting):
    eager, model = _models()
    C.compile_model(model, True)
    model.eval(), eager.eval()
    teacher = copy.deepcopy(model)  # ICE's / the mean teacher's EMA copy
    assert C.compiled_embed(teacher) is C.compiled_embed(model)
    with torch.no_grad():
        for p in teacher.parameters():
            p.mul_(0.5)
        reference = copy.deepcopy(eager)
        for p in reference.parameters():
            p.mul_(0.5)
        x = torch.randn(6, 3, 32, 16)
        torch.testing.assert_close(teacher(x), C.compile_model(reference, False)(x))  # the copy's weights
        torch.testing.assert_close(model(x), eager(x))  # and the original still its own
        assert not torch.allclose(teacher(x), model(x))
        calls = C.compiled_embed(model).calls
        C.compile_model(model, False)
        assert C.compiled_embed(model) is None
        torch.testing.assert_close(model(x), eager(x))
        assert C.compiled_embed(teacher).calls == calls  # the eager model did not call it


def test_exporting_tracing_and_counting_flops_run_the_eager_function(counting):
    from hardreid.export.info import count_flops

    eager, model = _models()
    C.compile_model(model, True)
    assert count_flops(model, 32, 16) == count_flops(eager, 32, 16) > 0  # a compiled kernel would hide its ops
    assert C.compiled_embed(model) is not None
    model.eval(), eager.eval()
    traced = torch.jit.trace(model, torch.randn(2, 3, 32, 16), check_trace=False)  # the check runs it untraced
    x = torch.randn(3, 3, 32, 16)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), eager(x))
    assert counting.graphs == 0 and C.compiled_embed(model).calls == 0


# --------------------------------------------------------------------------- fallbacks

def test_no_cpp_compiler_on_cpu_one_warning_and_eager(monkeypatch, log_lines):
    from torch._inductor import config as inductor_config

    monkeypatch.setattr(C.shutil, "which", lambda name: None)  # no $CXX / g++ / c++ / clang++ on PATH
    monkeypatch.setattr(C, "BACKEND", "inductor")
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda *a, **k: compiled.append(1) or (lambda *args: 1 / 0))
    eager, model = _models()
    C.compile_model(model, True)
    x = torch.randn(4, 3, 32, 16)
    with inductor_config.patch({"cpp.cxx": (None, "g++")}):  # as without $CXX
        for _ in range(3):
            torch.testing.assert_close(model.pool_and_embed(x), eager.pool_and_embed(x))
    assert _warnings(log_lines) == ["train.compile is off, the model runs eager: no C++ compiler found for "
                                    "inductor's CPU backend (looked for g++; install g++ or set CXX)"]
    assert C.compiled_embed(model).calls == 0


def test_missing_cpp_compiler_mirrors_inductors_lookup(monkeypatch):
    from torch._inductor import config as inductor_config

    with inductor_config.patch({"cpp.cxx": (None, "sh")}):  # any program on PATH will do
        assert C.missing_cpp_compiler() is None
    monkeypatch.setattr(C.shutil, "which", lambda name: "/usr/bin/clang++" if name == "clang++" else None)
    with inductor_config.patch({"cpp.cxx": (None, "no-such-compiler-here")}):
        assert C.missing_cpp_compiler() == ("no C++ compiler found for inductor's CPU backend (looked for "
                                            "no-such-compiler-here; set CXX=clang++)")
        monkeypatch.setenv("TORCH_INDUCTOR_INSTALL_GXX", "1")  # inductor would download one
        assert C.missing_cpp_compiler() is None


def test_a_failing_compiler_warns_once_and_the_model_goes_eager(monkeypatch, log_lines):
    def broken(gm, example_inputs):
        raise RuntimeError("the compiler broke\nwith a long story")

    monkeypatch.setattr(C, "BACKEND", broken)
    eager, model = _models()
    C.compile_model(model, True)
    teacher = copy.deepcopy(model)
    x = torch.randn(4, 3, 32, 16)
    for m in (model, teacher, model):
        torch.testing.assert_close(m.pool_and_embed(x), eager.pool_and_embed(x))
    warnings = _warnings(log_lines)
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert warnings[0].startswith("train.compile is off, the model runs eager: compiling failed (BackendCompilerFailed")
    assert "the compiler broke" in warnings[0] and "long story" not in warnings[0]


def test_the_models_own_errors_are_raised_and_compile_stays_on(counting, log_lines):
    _, model = _models()
    C.compile_model(model, True)
    model.train()
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):  # BatchNorm on one image
        model.pool_and_embed(torch.randn(1, 3, 32, 16))
    assert C.compiled_embed(model).disabled is None and _warnings(log_lines) == []


# --------------------------------------------------------------------------- training runs

def _run_config(**train_keys) -> Config:
    return tiny_config(model={"backbone": "tiny_cnn"},
                       train={"epochs": 1, "iters": 2, "eval_every": 1, "eval_at_start": False, **train_keys})


def test_compiled_run_trains_checkpoints_plain_keys_resumes_eager_and_extracts_compiled(tiny_root, tmp_path, counting):
    from hardreid.retrieval.model import load_feature_model

    data = load_dataset("market", tiny_root)
    run = tmp_path / "run"
    result = train(_run_config(compile=True, compile_cache=str(tmp_path / "cache")), data, run, log_to_stderr=False)
    embed = C.compiled_embed(result.model)
    assert embed is not None and embed.calls > 0 and counting.graphs >= 2  # training and extraction graphs
    assert (tmp_path / "cache").is_dir()
    log = (run / "train.log").read_text()
    assert "train.compile: compiled the re-ID network (training forward + backward, batch 8, mode default)" in log
    assert "train.compile: compiled the re-ID network (evaluation forward, batch 32, mode default)" in log
    state = load_checkpoint(run / "checkpoints" / "last.pth")
    assert not [k for k in state["model"] if "_orig_mod" in k] and state["config"]["train"]["compile"] == "default"
    assert "mAP" in state["history"][0]

    graphs = counting.graphs
    resumed = train(_run_config(epochs=2), data, run, resume=True, log_to_stderr=False)  # compile=false: eager
    assert C.compiled_embed(resumed.model) is None and counting.graphs == graphs
    assert [row["epoch"] for row in resumed.history] == [1, 2] and "mAP" in resumed.history[1]

    # a checkpoint of a compiled run: extraction compiled as trained, the same features as eager
    fm = load_feature_model(run / "checkpoints" / "last.pth")
    assert C.compiled_embed(fm.model) is None  # epoch 2 was eager: its config says so
    train(_run_config(epochs=3, compile="default"), data, run, resume=True, log_to_stderr=False)
    fm = load_feature_model(run / "checkpoints" / "last.pth")
    assert C.compiled_embed(fm.model) is not None
    x = torch.randn(5, 3, 64, 32)
    with torch.no_grad():
        features = fm.model(x)
        assert C.compiled_embed(fm.model).calls == 1
        torch.testing.assert_close(features, C.compile_model(fm.model, False)(x))


def test_extraction_compiles_on_request_and_off_overrides_the_checkpoint(tiny_root, tmp_path, counting):
    """``load_feature_model(compile=...)`` and the commands' ``--compile [MODE]``: an eager-trained checkpoint (or a
    plain backbone) extracts compiled when asked, with the eager features; ``off`` makes a compiled run's eager."""
    from hardreid.cli.common import compile_arg
    from hardreid.retrieval.model import load_feature_model

    data = load_dataset("market", tiny_root)
    run = tmp_path / "run"
    train(_run_config(eval_every=0), data, run, log_to_stderr=False)
    checkpoint = run / "checkpoints" / "last.pth"
    assert C.compiled_embed(load_feature_model(checkpoint).model) is None  # trained eager: extracts eager
    assert C.compiled_embed(load_feature_model(checkpoint, compile="max-autotune").model).mode == "max-autotune"
    fm = load_feature_model(checkpoint, compile=True)
    embed = C.compiled_embed(fm.model)
    assert embed is not None and embed.mode == "default"
    x = torch.randn(6, 3, 64, 32)
    with torch.no_grad():
        features = fm.model(x)
        assert embed.calls == 1 and counting.graphs == 1
        torch.testing.assert_close(features, load_feature_model(checkpoint, compile=False).model(x))
    train(_run_config(epochs=2, eval_every=0, compile=True), data, run, resume=True, log_to_stderr=False)
    assert C.compiled_embed(load_feature_model(checkpoint).model) is not None  # as trained ...
    assert C.compiled_embed(load_feature_model(checkpoint, compile=False).model) is None  # ... unless off
    plain = load_feature_model(backbone="mobilenet_v2", height=64, width=32, compile=True)
    assert C.compiled_embed(plain.model) is not None
    assert C.compiled_embed(load_feature_model(backbone="mobilenet_v2", height=64, width=32).model) is None
    assert compile_arg("off") is False and compile_arg("default") == "default" and compile_arg("MAX-AUTOTUNE") == "max-autotune"
    with pytest.raises(Exception, match="off, or a torch.compile mode"):
        compile_arg("fast")


def test_the_commands_take_compile_with_or_without_a_mode(capsys):
    from hardreid.cli.app import build_parser

    parser = build_parser()
    for command in ("extract", "evaluate"):
        base = [command, "--checkpoint", "x.pth"] + (["--images", "d", "--output", "o"] if command == "extract" else
                                                     ["--data-root", "d"])
        assert parser.parse_args(base).compile is None
        assert parser.parse_args(base + ["--compile"]).compile == "default"
        assert parser.parse_args(base + ["--compile", "off"]).compile is False
        with pytest.raises(SystemExit):
            parser.parse_args(base + ["--compile", "fast"])
        assert "off, or a torch.compile mode" in capsys.readouterr().err
    export = parser.parse_args(["export", "--checkpoint", "x.pth", "--output", "m.onnx"])
    assert not hasattr(export, "compile")  # export traces the eager network: nothing to compile


def test_a_compiled_run_whose_compiler_fails_trains_on_eager(tiny_root, tmp_path, monkeypatch):
    def broken(gm, example_inputs):
        raise RuntimeError("no kernels today")

    monkeypatch.setattr(C, "BACKEND", broken)
    data = load_dataset("market", tiny_root)
    compiled = train(_run_config(compile=True), data, tmp_path / "compiled", log_to_stderr=False)
    monkeypatch.setattr(C, "BACKEND", CountingBackend())
    plain = train(_run_config(), data, tmp_path / "eager", log_to_stderr=False)
    log = (tmp_path / "compiled" / "train.log").read_text().splitlines()
    assert sum("train.compile is off" in line for line in log) == 1
    assert [line for line in log if "train.compile is off" in line][0].endswith(
        "compiling failed (BackendCompilerFailed: RuntimeError: no kernels today)")
    assert compiled.history[0]["loss"] == pytest.approx(plain.history[0]["loss"], rel=1e-5)  # the same run, eager
    torch.testing.assert_close(compiled.model.state_dict(), plain.model.state_dict())


def test_camera_batchnorm_trains_compiled_as_eager(tiny_root, tmp_path, counting):
    """model.camera_bn lends each camera's running statistics to the compiled forward (functional_call): the
    compiled run's weights, statistics and losses are the eager run's."""
    data = load_dataset("market", tiny_root)
    cfg = _run_config(compile=True, eval_every=0)
    cfg.model.camera_bn = True
    compiled = train(cfg, data, tmp_path / "compiled", log_to_stderr=False)
    cfg.train.compile = False
    plain = train(cfg, data, tmp_path / "eager", log_to_stderr=False)
    assert C.compiled_embed(compiled.model).calls > 0 and C.compiled_embed(plain.model) is None
    assert compiled.history[0]["loss"] == plain.history[0]["loss"]
    torch.testing.assert_close(compiled.model.state_dict(), plain.model.state_dict(), rtol=0, atol=0)
    saved = [load_checkpoint(tmp_path / run / "checkpoints" / "last.pth") for run in ("compiled", "eager")]
    torch.testing.assert_close(saved[0]["camera_bn"]["statistics"], saved[1]["camera_bn"]["statistics"], rtol=0, atol=0)


# --------------------------------------------------------------------------- the real compiler (slow)

SETTINGS = {"cluster_contrast": {"base": "cluster_contrast"}, "spcl": {"base": "spcl"}, "ice": {"base": "ice"},
            "strong_baseline": {"base": "strong_baseline"},
            "hpf": {"hard_samples": ["hpf"]}, "hpi": {"hard_samples": ["hpi"]}, "hng": {"hard_samples": ["hng"]},
            "mean_teacher": {"hard_samples": ["mean_teacher"]}}


@pytest.fixture(scope="module")
def inductor_cache(tmp_path_factory):
    """One on-disk cache for the slow tests: the later ones find the graphs they share with the earlier ones."""
    return tmp_path_factory.mktemp("inductor")


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SETTINGS))
def test_every_method_trains_compiled_with_inductor_resumes_eager_and_evaluates(name, tiny_root, tmp_path,
                                                                                inductor_cache, monkeypatch):
    if C.missing_cpp_compiler():
        pytest.skip(C.missing_cpp_compiler())
    monkeypatch.setattr(C, "BACKEND", "inductor")
    data = load_dataset("market", tiny_root)
    extra = {"hng": {"warmup_epochs": 0, "pictures": 0, "ngf": 4, "ndf": 4}} if name == "hng" else {}
    cfg = tiny_config(method=SETTINGS[name], train={"epochs": 1, "iters": 2, "eval_every": 1, "eval_at_start": False,
                                                    "compile": True, "compile_cache": str(inductor_cache)}, **extra)
    run = tmp_path / "run"
    result = train(cfg, data, run, log_to_stderr=False)
    embed = C.compiled_embed(result.model)
    log = (run / "train.log").read_text()
    assert "train.compile is off" not in log, log
    assert embed is not None and embed.calls > 0 and "compiled the re-ID network (training forward + backward" in log
    assert "mAP" in result.history[0] and torch.isfinite(torch.tensor(result.history[0]["loss"]))
    state = load_checkpoint(run / "checkpoints" / "last.pth")
    assert not [k for k in state["model"] if "_orig_mod" in k]
    assert not [k for k in state.get("eval_model", {}) if "_orig_mod" in k]
    resumed = train(apply_dict(cfg, {"train": {"epochs": 2, "compile": False}}, "test"), data, run, resume=True,
                    log_to_stderr=False)
    assert "mAP" in resumed.history[1] and C.compiled_embed(resumed.model) is None


@pytest.mark.slow  # about a minute: torchrun, two processes, two runs
def test_two_processes_train_the_compiled_forward_inside_ddp_as_eager(tiny_root, tmp_path, monkeypatch):
    """DDP wraps the model's pool_and_embed, whose embed_chunk is compiled (the "compile the inner module" pattern):
    with the traced graph run as it is (backend "eager"), the step's gradients, weights and memories are the
    eager 2-process run's, bit for bit, on both processes."""
    from test_distributed import WORKER, assert_identical, load_run, succeeded, torchrun

    monkeypatch.setenv("HARDREID_TEST_COMPILE_BACKEND", "eager")  # the workers' torch.compile backend
    assert succeeded(torchrun([str(WORKER), str(tiny_root), str(tmp_path), "cc_step", "cc_compiled_step"]))
    for rank in (0, 1):
        compiled, eager = load_run(tmp_path, "cc_compiled_step", rank), load_run(tmp_path, "cc_step", rank)
        assert compiled["compiled_calls"] > 0 and eager["compiled_calls"] == 0
        for part in ("before", "grads", "model", "shared"):
            assert_identical(compiled[part], eager[part], f"rank {rank} {part}")
        assert compiled["history"][0]["loss"] == eager["history"][0]["loss"]
