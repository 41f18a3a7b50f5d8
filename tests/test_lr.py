"""[net] -> learning rate and parameter update, against src/parser.c parse_net_options/§4.

The expected values are written out from the formulas in src/network.c get_current_rate,
update_network (by hand, per case),
not computed by calling the code under test."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from cfgparse import CfgError, parse
from darkcfg.config import NetConfig, apply_overrides
from darkcfg.train.loop import Trainer

ROOT = Path(__file__).resolve().parents[1]


def cfg_of(text: str, seed: int = 0) -> NetConfig:
    return NetConfig.from_block(parse("[net]\nwidth=4\nheight=4\nchannels=1\n" + text)[0], seed)


# (net keys, [(batch_num, expected lr)])
TABLE = [
    ("learning_rate=0.01\npolicy=constant", [(1, 0.01), (500, 0.01)]),
    ("learning_rate=0.1\npolicy=step\nstep=10\nscale=0.5",
     [(1, 0.1), (9, 0.1), (10, 0.05), (19, 0.05), (20, 0.025), (35, 0.0125)]),
    ("learning_rate=0.1\npolicy=steps\nsteps=10,20,30\nscales=0.1,0.5,2",
     [(1, 0.1), (9, 0.1), (10, 0.01), (19, 0.01), (20, 0.005), (29, 0.005), (30, 0.01),
      (1000, 0.01)]),
    # missing scale entries count as 1.0
    ("learning_rate=0.1\npolicy=steps\nsteps=5,8\nscales=0.1", [(4, 0.1), (5, 0.01), (9, 0.01)]),
    ("learning_rate=0.2\npolicy=exp\ngamma=0.9", [(1, 0.2 * 0.9), (7, 0.2 * 0.9 ** 7)]),
    ("learning_rate=0.1\npolicy=poly\npower=2\nmax_batches=100",
     [(1, 0.1 * 0.99 ** 2), (50, 0.1 * 0.25), (100, 0.0)]),
    ("learning_rate=0.1\npolicy=poly\nmax_batches=10",  # power defaults to 4
     [(5, 0.1 * 0.5 ** 4)]),
    ("learning_rate=0.3\npolicy=sigmoid\ngamma=0.5\nstep=40",
     [(40, 0.15), (42, 0.3 / (1 + math.exp(1.0))), (30, 0.3 / (1 + math.exp(-5.0)))]),
    # past e^709 C's exp gives inf and the rate 0; math.exp raised OverflowError (a traceback in
    # training and --plot-lr); gamma 0.1 reaches it 7100 iterations after step
    ("learning_rate=0.3\npolicy=sigmoid\ngamma=0.1\nstep=5000",
     [(12100, 0.3 * math.exp(-710.0)), (500000, 0.0), (1, 0.3 / (1 + math.exp(-499.9)))]),
    # C's pow overflows to inf where Python's float power raised
    ("learning_rate=0.1\npolicy=exp\ngamma=2", [(10, 0.1 * 1024), (2000, math.inf)]),
    ("learning_rate=0.1\npolicy=step\nstep=1\nscale=10", [(2, 10.0), (400, math.inf)]),
    # sgdr: cycles of 10, 20, 40 (sgdr_mult 2): restarts after batch_num 10 and 30
    ("learning_rate=0.1\nlearning_rate_min=0.001\npolicy=sgdr\nsgdr_cycle=10",
     [(0, 0.1), (5, 0.001 + 0.5 * 0.099 * (1 + math.cos(math.pi * 5 / 10))),
      (10, 0.001), (11, 0.001 + 0.5 * 0.099 * (1 + math.cos(math.pi * 1 / 20))),
      (30, 0.001), (40, 0.001 + 0.5 * 0.099 * (1 + math.cos(math.pi * 10 / 40)))]),
    # sgdr_cycle defaults to max_batches
    ("learning_rate=0.1\nlearning_rate_min=0\npolicy=sgdr\nmax_batches=8\nsgdr_mult=1",
     [(4, 0.05), (8, 0.0), (12, 0.05)]),
    # burn-in overrides every policy: lr * (batch_num / burn_in) ** power
    ("learning_rate=0.1\npolicy=steps\nsteps=2\nscales=0.1\nburn_in=10\npower=2",
     [(1, 0.1 * 0.01), (5, 0.1 * 0.25), (9, 0.1 * 0.81), (10, 0.01)]),
    ("learning_rate=0.01\nburn_in=100", [(50, 0.01 * 0.5 ** 4), (100, 0.01)]),
]


@pytest.mark.parametrize("keys,expected", TABLE, ids=[t[0].split("policy=")[-1].split("\n")[0]
                                                      for t in TABLE])
def test_lr_table(keys, expected):
    cfg = cfg_of(keys)
    for batch_num, lr in expected:
        assert cfg.lr_at(batch_num) == pytest.approx(lr, rel=1e-9, abs=1e-15), batch_num


def test_random_policy_is_pure_and_seeded():
    a, b, c = (cfg_of("learning_rate=0.5\npolicy=random\npower=1", seed) for seed in (1, 1, 2))
    first = [a.lr_at(k) for k in range(1, 50)]
    assert first == [b.lr_at(k) for k in range(1, 50)]  # same seed, same schedule
    assert first == [a.lr_at(k) for k in range(1, 50)]  # asking again changes nothing
    assert first != [c.lr_at(k) for k in range(1, 50)]  # another seed, another schedule
    assert all(0 <= v <= 0.5 for v in first) and len(set(first)) > 40
    # power shapes it: lr * u ** 4 for the same draws u
    d = cfg_of("learning_rate=0.5\npolicy=random\npower=4", 1)
    assert [d.lr_at(k) for k in range(1, 50)] == pytest.approx(
        [0.5 * (v / 0.5) ** 4 for v in first])


@pytest.mark.parametrize("keys,code", [
    ("policy=steps", "E305"),  # Darknet: fatal without steps
    ("policy=poly\nmax_batches=0", "E305"),  # Darknet divides by zero
    ("policy=sgdr\nmax_batches=0", "E305"),  # Darknet loops forever
    ("policy=step\nstep=0", "E305"),
    # 0 ** -1 at max_batches: a ZeroDivisionError traceback at the last iteration
    ("policy=poly\npower=-1\nmax_batches=10", "E305"),
    # Darknet reads sgdr_mult as an int (0 here): a fraction shrank the cycles, and lr_at looked
    # for the cycle of batch_num 5 forever (the run hung, deaf to SIGTERM)
    ("policy=sgdr\nsgdr_cycle=2\nsgdr_mult=0.5\nmax_batches=10", "E305"),
    # values torch's Adam refuses (a traceback from the optimizer before)
    ("adam=1\nB1=2", "E305"), ("adam=1\nB2=1", "E305"), ("adam=1\neps=-1", "E305"),
])
def test_impossible_schedules_are_located_errors(keys, code):
    with pytest.raises(CfgError) as err:
        cfg_of(keys)
    assert err.value.code == code and err.value.first.line > 0


def test_set_overrides_are_typed_and_checked():
    net = parse("[net]\nwidth=4\nheight=4\nchannels=1\nbatch=8\n")[0]
    block, values = apply_overrides(net, ["batch=32", "policy=exp", "learning_rate = 0.5"])
    cfg = NetConfig.from_block(block)
    assert (cfg.batch, cfg.policy, cfg.learning_rate) == (32, "exp", 0.5)
    assert values == {"batch": "32", "policy": "exp", "learning_rate": "0.5"}
    with pytest.raises(CfgError) as err:
        apply_overrides(net, ["learnig_rate=0.1"])
    assert err.value.code == "E205" and "learning_rate" in err.value.first.hint
    with pytest.raises(CfgError) as err:
        apply_overrides(net, ["batch=many"])
    assert err.value.code == "E202"
    with pytest.raises(CfgError) as err:
        apply_overrides(net, ["policy=cosine"])
    assert err.value.code == "E204"
    with pytest.raises(CfgError) as err:
        apply_overrides(net, ["momentum=-1"])
    assert err.value.code == "E203"
    with pytest.raises(CfgError):
        apply_overrides(net, ["batch"])
    with pytest.raises(CfgError) as err:  # an int in Darknet: 1.5 would be read as 1
        apply_overrides(net, ["sgdr_mult=1.5"])
    assert err.value.code == "E203"


@pytest.mark.parametrize("setting, hint", [
    ("width=1e3", "write width=1000"),  # what the user meant, not atoi's 1
    ("width=64.0", "write width=64"),
    ("width=12.7", "write width= as a whole number"),  # the message says Darknet reads 12
    ("filters=3", "--set convolutional.filters=3 sets it in every [convolutional]"),
])
def test_set_errors_hint_at_what_was_meant(setting, hint):
    from darkcfg.config import apply_overrides_to_blocks

    blocks = parse("[net]\nwidth=4\nheight=4\nchannels=1\n[convolutional]\nfilters=2\n")
    with pytest.raises(CfgError) as err:
        apply_overrides_to_blocks(list(blocks), [setting])
    assert hint in err.value.first.hint, err.value.first.format()


@pytest.mark.parametrize("setting, where", [
    ("width=\u00a0416", "no-break space U+00A0 in a --set value"),
    ("width=416\u2003", "em space U+2003 in a --set value"),
    ("width=4\u200b16", "zero width space U+200B in a --set value"),
    ("wid\u200bth=416", "zero width space U+200B in a --set key"),
    ("\u00a0width=416", "no-break space U+00A0 in a --set key"),  # str.strip() dropped it
    ("convolutional.size=\u30003", "ideographic space U+3000 in a --set value"),
])
def test_set_values_with_non_ascii_spaces_are_e109(setting, where):
    """str.split() dropped these silently (width=<U+00A0>416 set 416) while the same text in a
    cfg file is E109: a --set goes through the same rule, located at the --set."""
    from darkcfg.config import apply_overrides_to_blocks

    blocks = parse("[net]\nwidth=4\nheight=4\nchannels=1\n[convolutional]\nfilters=2\n")
    with pytest.raises(CfgError) as err:
        apply_overrides_to_blocks(list(blocks), [setting])
    d = err.value.first
    assert (d.code, d.path, d.line) == ("E109", f"--set {setting}", 0)
    assert d.message.startswith(f"{where}") and "Darknet does not remove it" in d.message
    assert d.hint.startswith("delete it or type an ordinary space")
    assert apply_overrides_to_blocks(list(blocks), ["width = 416\t"])[1] == {"width": "416"}


# -- the update ---------------------------------------------------------------------------------
REGRESSOR = """
[net]
inputs=3
batch={batch}
subdivisions={subdivisions}
learning_rate=0.1
momentum=0.9
decay=0.01
max_batches=10
policy=steps
steps=2
scales=0.5
{extra}

[connected]
output=2
activation=linear
learning_rate=0.5

[connected]
output=2
activation=linear

[cost]
type=sse
"""


def build(text: str):
    from builders import build as build_net

    torch.manual_seed(0)
    net = build_net(parse(text))
    return net, NetConfig.from_block(net.net_block)


def test_step_equals_darknet_update_rule():
    """Darknet (§4): updates += -decay*B*w (weights only); w += lr*scale/B * updates;
    updates *= momentum, where updates accumulate the *summed* negative gradient of B images
    over all subdivisions, and the k-th update uses lr_at(k)."""
    net, cfg = build(REGRESSOR.format(batch=8, subdivisions=2, extra=""))
    trainer = Trainer(net, cfg, "cpu")
    ref = {n: p.detach().clone().double() for n, p in net.named_parameters()}
    scale = {n: (0.5 if n.startswith("layers.0.") else 1.0) for n in ref}
    updates = {n: torch.zeros_like(p) for n, p in ref.items()}
    gen = torch.Generator().manual_seed(3)
    for k in (1, 2, 3):
        x, y = torch.randn(8, 3, generator=gen), torch.randn(8, 2, generator=gen)
        # Darknet's gradients: the sum over the 8 images of the [cost] delta y - out (l2_cpu:
        # half the derivative of the squared error) carried back to each w
        model = {n: v.clone().requires_grad_(True) for n, v in ref.items()}
        h = x.double() @ model["layers.0.unit.linear.weight"].T + model["layers.0.unit.linear.bias"]
        out = h @ model["layers.1.unit.linear.weight"].T + model["layers.1.unit.linear.bias"]
        out.backward(out.detach() - y.double())
        lr = {1: 0.1, 2: 0.05, 3: 0.05}[k]  # steps=2, scales=0.5
        for n in ref:
            updates[n] -= model[n].grad
            if n.endswith("weight"):
                updates[n] -= 0.01 * 8 * ref[n]
            ref[n] = ref[n] + lr * scale[n] / 8 * updates[n]
            updates[n] *= 0.9
        trainer.step(x, y)
        assert trainer.optimizer.param_groups[0]["lr"] in (lr, lr * 0.5)
    for n, p in net.named_parameters():
        torch.testing.assert_close(p.detach().double(), ref[n], rtol=1e-5, atol=1e-6)
    assert trainer.iteration == 3 and trainer.images_seen == 24


def test_param_groups_decay_weights_only_and_scale_lr():
    net, cfg = build(REGRESSOR.format(batch=4, subdivisions=1, extra=""))
    trainer = Trainer(net, cfg, "cpu")
    trainer.step(torch.randn(4, 3), torch.randn(4, 2))
    for group in trainer.optimizer.param_groups:
        for p in group["params"]:
            assert group["weight_decay"] == (0.01 if p.dim() > 1 else 0.0)
        assert group["lr"] == pytest.approx(0.1 * group["lr_scale"])
    first = {id(p) for p in net.layers[0].parameters()}
    scales = {g["lr_scale"] for g in trainer.optimizer.param_groups
              if first & {id(p) for p in g["params"]}}
    assert scales == {0.5}


def test_adam_maps_to_torch_adam():
    net, cfg = build(REGRESSOR.format(batch=4, subdivisions=1, extra="adam=1\nB1=0.8\nB2=0.99\n"
                                      "eps=0.0004"))
    opt = Trainer(net, cfg, "cpu").optimizer
    assert isinstance(opt, torch.optim.Adam)
    assert opt.defaults["betas"] == (0.8, 0.99)
    # Darknet's Adam sees gradients summed over the batch of 4: eps / 4 on the mean loss
    assert opt.defaults["eps"] == pytest.approx(0.0001)


def test_subdivisions_accumulate_to_the_full_batch_gradient():
    """batch=8 in 4 subdivisions takes the same step as batch=8 at once (no BN, no dropout)."""
    results = []
    for subdivisions in (1, 4):
        net, cfg = build(REGRESSOR.format(batch=8, subdivisions=subdivisions, extra=""))
        trainer = Trainer(net, cfg, "cpu")
        assert trainer.subdivisions == subdivisions and trainer.batch == 8
        gen = torch.Generator().manual_seed(5)
        losses = [float(trainer.step(torch.randn(8, 3, generator=gen),
                                     torch.randn(8, 2, generator=gen))) for _ in range(3)]
        results.append((losses, [p.detach().clone() for p in net.parameters()]))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-5)
    for a, b in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_stopbackward_n_freezes_for_the_first_n_updates():
    """AlexeyAB: stopbackward=N > 1 skips backward through that layer (and earlier ones) while
    fewer than N updates are done."""
    text = REGRESSOR.format(batch=4, subdivisions=1, extra="").replace(
        "learning_rate=0.5\n", "learning_rate=0.5\nstopbackward=2\n", 1)
    net, cfg = build(text)
    trainer = Trainer(net, cfg, "cpu")
    first = [p.detach().clone() for p in net.layers[0].parameters()]
    second = [p.detach().clone() for p in net.layers[1].parameters()]
    gen = torch.Generator().manual_seed(1)
    for _ in range(2):
        trainer.step(torch.randn(4, 3, generator=gen), torch.randn(4, 2, generator=gen))
    assert all(torch.equal(a, b) for a, b in zip(first, net.layers[0].parameters(), strict=True))
    assert not torch.equal(second[0], net.layers[1].unit.linear.weight)
    trainer.step(torch.randn(4, 3, generator=gen), torch.randn(4, 2, generator=gen))
    assert not torch.equal(first[0], net.layers[0].unit.linear.weight)


def test_label_smoothing_uses_darknets_truth_vectors():
    """[net] label_smooth_eps: the loss equals cross-entropy against Darknet's fill_truth_smooth
    vectors (1 - eps for the class, eps/(k-1) elsewhere), computed here by hand."""
    from dataclasses import replace

    from builders import build
    from darkcfg.train.loop import LossModel
    from darkcfg.train.tasks import task_for

    cfg = "[net]\nwidth=2\nheight=2\nchannels=1\n[connected]\noutput=4\nactivation=linear\n" \
          "[softmax]\n"
    torch.manual_seed(0)
    net = build(cfg)
    x, y = torch.rand(3, 1, 2, 2), torch.tensor([0, 2, 3])
    logits = net(x, collect=[0])[0].reshape(3, 4)
    logp = torch.log_softmax(logits, 1)
    eps = 0.1
    truth = torch.full((3, 4), eps / 3)
    truth[torch.arange(3), y] = 1 - eps
    expected = -(truth * logp).sum(1).mean()
    smoothed, _ = LossModel(net, replace(task_for(net), label_smooth_eps=eps))(x, y)
    assert torch.allclose(smoothed, expected, atol=1e-6)
    plain, _ = LossModel(net, task_for(net))(x, y)
    assert torch.allclose(plain, -logp[torch.arange(3), y].mean(), atol=1e-6)
    assert not torch.allclose(smoothed, plain)


def test_set_a_key_in_every_section_of_a_type(tmp_path):
    from darkcfg.config import apply_overrides_to_blocks

    blocks = list(parse(ROOT / "cfg" / "vgg16.cfg"))
    new, values = apply_overrides_to_blocks(
        blocks, ["convolutional.batch_normalize=1", "width=32", "net.height=32"])
    convs = [b for b in new if b.type == "convolutional"]
    assert len(convs) == 13 and all(b.int("batch_normalize") == 1 for b in convs)
    assert all(b.int("batch_normalize") == 0 for b in blocks if b.type == "convolutional")
    assert new[0].int("width") == 32 and new[0].int("height") == 32
    assert all(a is b for a, b in zip(blocks, new, strict=True) if a.type == "maxpool")
    assert values == {"convolutional.batch_normalize": "1", "width": "32", "net.height": "32"}
    with pytest.raises(CfgError, match="no \\[yolo\\] section") as err:
        apply_overrides_to_blocks(blocks, ["yolo.ignore_thresh=.5"])
    assert "--set yolo.ignore_thresh=.5" in str(err.value)
    with pytest.raises(CfgError, match="E205") as err:
        apply_overrides_to_blocks(blocks, ["convolutional.filtres=8"])
    assert "filters" in str(err.value)
