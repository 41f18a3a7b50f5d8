"""The CUDA-only branches of the training step, run on the CPU where torch allows it: autocast
(bfloat16 on the CPU), GradScaler with float16 (skipped updates on overflow, its state in the
checkpoint), and the step's deferred loss read (a tensor, no host sync)."""

from __future__ import annotations

import pytest
import torch

from builders import build
from darkcfg.config import NetConfig
from darkcfg.train.loop import Trainer, amp_dtype_for, darknet_init
from tests.test_detection_train import CFG


def detector(tmp_path):
    path = tmp_path / "tiny.cfg"
    path.write_text(CFG.format(max_batches=12))
    torch.manual_seed(0)
    net = build(str(path))
    darknet_init(net)
    return net, NetConfig.from_block(net.net_block)


def batch():
    torch.manual_seed(1)
    truth = torch.zeros(4, 5, 5)
    truth[:, 0] = torch.tensor([0.5, 0.5, 0.3, 0.3, 0])
    truth[:2, 1] = torch.tensor([0.2, 0.3, 0.2, 0.25, 1])
    return (torch.rand(4, 3, 64, 64) * 255).to(torch.uint8), truth


def test_amp_dtype_choice():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert amp_dtype_for(cpu, None) is None and amp_dtype_for(cpu, False) is None
    assert amp_dtype_for(cpu, True) == torch.bfloat16
    assert amp_dtype_for(cpu, torch.float16) == torch.float16
    assert amp_dtype_for(cuda, False) is None


def test_bf16_autocast_step_on_the_cpu(tmp_path):
    net, cfg = detector(tmp_path)
    trainer = Trainer(net, cfg, "cpu", amp=True)
    assert trainer.amp_dtype == torch.bfloat16 and not trainer.scaler.is_enabled()
    seen = []
    hook = net.layers[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    before = [p.detach().clone() for p in net.parameters()]
    loss = trainer.step(*batch())
    hook.remove()
    assert isinstance(loss, torch.Tensor) and loss.dtype == torch.float32  # the heads: float32
    assert torch.isfinite(loss) and float(loss) > 0
    assert torch.bfloat16 in seen  # the convolutions ran in bfloat16
    # oneDNN's bfloat16 kernels want NHWC: --amp on the CPU trains channels-last
    assert trainer.channels_last and net.layers[0].conv.weight.is_contiguous(
        memory_format=torch.channels_last)
    assert all(p.dtype == torch.float32 for p in net.parameters())  # master weights stay
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))
    # the same step without autocast: close, not equal
    net2, cfg2 = detector(tmp_path)
    plain = Trainer(net2, cfg2, "cpu", amp=False).step(*batch())
    assert float(loss) == pytest.approx(float(plain), rel=0.05)


def test_bf16_steps_through_the_native_kernels_repeat_bit_for_bit(tmp_path, monkeypatch):
    """`--amp` on the CPU runs batch-norm + leaky and the 2x2 max-pools through the bfloat16
    channels-last native kernels; two runs of the same steps give the same weights to the bit
    (what byte-identical kill-and-resume needs from them)."""
    from builders import native

    if native.library() is None:
        pytest.skip(f"no native kernels here: {native.status()}")
    ran = set()
    for name in ("bn_act_forward_bf16", "maxpool2x2_bf16"):
        real = getattr(native, name)
        monkeypatch.setattr(native, name, lambda *a, _r=real, _n=name: ran.add(_n) or _r(*a))

    pooled = CFG.replace("filters=8\nsize=3\nstride=2\npad=1\nactivation=leaky\n",
                         "filters=8\nsize=3\nstride=1\npad=1\nactivation=leaky\n\n"
                         "[maxpool]\nsize=2\nstride=2\n", 1)
    assert "[maxpool]" in pooled
    path = tmp_path / "pooled.cfg"
    path.write_text(pooled.format(max_batches=12))

    def trained():
        torch.manual_seed(0)
        net = build(str(path))
        darknet_init(net)
        cfg = NetConfig.from_block(net.net_block)
        trainer = Trainer(net, cfg, "cpu", amp=True)
        for _ in range(2):
            trainer.step(*batch())
        return [p.detach().clone() for p in net.parameters()]

    first, second = trained(), trained()
    assert ran == {"bn_act_forward_bf16", "maxpool2x2_bf16"}
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


def test_float16_grad_scaler_scales_skips_and_checkpoints(tmp_path):
    net, cfg = detector(tmp_path)
    trainer = Trainer(net, cfg, "cpu", amp=torch.float16)
    assert trainer.scaler.is_enabled()
    scale0 = trainer.scaler.get_scale()
    images, truth = batch()
    loss = trainer.step(images, truth)
    assert torch.isfinite(loss)
    assert trainer.scaler.get_scale() == scale0  # no overflow: unchanged (growth after 2000)

    # an overflowing gradient: GradScaler skips the update and halves the scale
    weights = [p.detach().clone() for p in net.parameters()]
    handle = net.layers[0].register_full_backward_hook(
        lambda m, gin, gout: tuple(torch.full_like(g, float("inf")) if g is not None else None
                                   for g in gin))
    first = next(p for p in net.layers[1].parameters())
    first.register_hook(lambda g: torch.full_like(g, float("inf")))
    trainer.step(images, truth)
    handle.remove()
    assert trainer.scaler.get_scale() == scale0 / 2
    for a, b in zip(weights, net.parameters(), strict=True):
        torch.testing.assert_close(a, b.detach())  # the update was skipped
    assert trainer.iteration == 2  # ... but the iteration counts, as Darknet's would

    state = trainer.state_dict()
    net2, cfg2 = detector(tmp_path)
    again = Trainer(net2, cfg2, "cpu", amp=torch.float16)
    again.load_state_dict(state)
    assert again.scaler.get_scale() == scale0 / 2 and again.iteration == 2


def test_amp_flag_reaches_the_run_options():
    from darkcfg.cli.train import parse

    assert parse(["cfg/yolov3-tiny.cfg", "--amp"]).amp is True
    assert parse(["cfg/yolov3-tiny.cfg", "--no-amp"]).amp is False
    assert parse(["cfg/yolov3-tiny.cfg"]).amp is None  # CUDA on, CPU off
    with pytest.raises(SystemExit):
        parse(["cfg/yolov3-tiny.cfg", "--amp", "--no-amp"])


def test_compile_on_the_cpu_hides_the_cuda_home_notice(tmp_path):
    """torch.compile on a CPU-only host logged 'No CUDA runtime is found, using CUDA_HOME=...'
    (torch.utils.cpp_extension) into the run's output; the logger's other records still pass."""
    import logging

    net, cfg = detector(tmp_path)
    Trainer(net, cfg, "cpu", amp=False, compile=True)  # compiles lazily: nothing runs yet
    logger = logging.getLogger("torch.utils.cpp_extension")

    def record(message):
        return logger.makeRecord(logger.name, logging.WARNING, __file__, 1, message, (), None)

    assert not logger.filter(record("No CUDA runtime is found, using CUDA_HOME='/usr/local'"))
    assert logger.filter(record("Error checking compiler version for c++"))


@pytest.mark.slow
def test_compiled_training_step_matches_eager(tmp_path):
    """--compile compiles the network (the heads' data-dependent losses stay eager: compiling
    them crashed Inductor in torch 2.14 with a traceback, and --compile had no test)."""
    net, cfg = detector(tmp_path)
    eager = Trainer(net, cfg, "cpu", amp=False)
    losses = [float(eager.step(*batch())) for _ in range(2)]
    net2, cfg2 = detector(tmp_path)
    compiled = Trainer(net2, cfg2, "cpu", amp=False, compile=True)
    assert compiled.net is net2  # checkpoints and .weights read the plain module
    got = [float(compiled.step(*batch())) for _ in range(2)]
    assert got == pytest.approx(losses, rel=1e-4)
    for a, b in zip(net.parameters(), net2.parameters(), strict=True):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-5)


@pytest.mark.slow
def test_compiled_steps_train_as_eager_ones(tiny_classifier):
    """--compile on the CPU (Inductor, ~20 s of compiling): the same losses and weights as the
    eager step, within float32 rounding of fused kernels."""
    runs = []
    for compiled in (False, True):
        torch.manual_seed(0)
        net = build(tiny_classifier.text(dropout=0))
        darknet_init(net)
        trainer = Trainer(net, NetConfig.from_block(net.net_block), "cpu", compile=compiled)
        gen = torch.Generator().manual_seed(5)
        losses = [float(trainer.step(torch.randint(0, 256, (16, 3, 12, 12), generator=gen,
                                                   dtype=torch.uint8),
                                     torch.randint(0, 4, (16,), generator=gen)))
                  for _ in range(3)]
        runs.append((losses, [p.detach().clone() for p in net.parameters()]))
    (eager, weights), (compiled, compiled_weights) = runs
    assert compiled == pytest.approx(eager, rel=1e-4)
    for a, b in zip(weights, compiled_weights, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)
