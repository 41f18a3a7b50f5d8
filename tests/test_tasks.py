"""Tasks as data (darkcfg.train.tasks): which task a network gets, the loss summed over every loss
layer, what "best" means, metrics.csv columns, and the hooks a detection task will use (`seen`,
per-step statistics) flowing through the real Trainer."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

from builders import build
from cfgparse import CfgError
from darkcfg.config import NetConfig
from darkcfg.train import tasks
from darkcfg.train.loop import Trainer
from darkcfg.train.tasks import ClassifyTask, RegressTask, Task, task_for

NET = "[net]\nwidth=2\nheight=2\nchannels=1\nbatch=4\nsubdivisions=2\nlearning_rate=0.1\n" \
      "max_batches=3\n"
# two classifier heads: layer 1 reads layer 0, layer 4 reads layer 3 (from layer 0 again)
TWO_HEADS = NET + "[connected]\noutput=3\nactivation=linear\n[softmax]\n[route]\nlayers=0\n" \
    "[connected]\noutput=3\nactivation=linear\n[softmax]\n"
REGRESSOR = "[net]\ninputs=3\nbatch=2\nmax_batches=1\n[connected]\noutput=2\n" \
    "activation=linear\n[cost]\n"
DETECTOR = NET.replace("width=2\nheight=2", "width=8\nheight=8") + \
    "[convolutional]\nfilters=18\nsize=1\nactivation=linear\n" \
    "[yolo]\nmask=0,1,2\nanchors=1,1,2,2,3,3\nclasses=1\nnum=3\n"


def config(net) -> NetConfig:
    return NetConfig.from_block(net.net_block, seed=0)


def test_every_loss_layer_is_listed_and_summed():
    torch.manual_seed(0)
    net = build(TWO_HEADS)
    assert net.loss_layers == [1, 4]
    task = task_for(net, config(net))
    assert isinstance(task, ClassifyTask) and task.heads == (1, 4) and task.outputs == 3
    x, y = torch.rand(4, 1, 2, 2), torch.tensor([0, 1, 2, 1])
    out = net(x, collect=[0, 3])
    expected = F.cross_entropy(out[0].reshape(4, 3), y) + F.cross_entropy(out[3].reshape(4, 3), y)
    loss, stats = task.loss(net, x, y)
    torch.testing.assert_close(loss, expected)
    assert stats == {}


def test_the_task_follows_the_loss_layers():
    regressor = build(REGRESSOR)
    task = task_for(regressor, config(regressor))
    assert isinstance(task, RegressTask) and task.name == "regress"
    assert task.columns == (*tasks.STEP_COLUMNS, "val_loss")
    assert task.score({"val_loss": 0.5}) > task.score({"val_loss": 2.0})  # lower is better

    classifier = build(TWO_HEADS)
    task = task_for(classifier, config(classifier))
    assert task.columns[-3:] == ("val_top1", "val_top5", "val_loss")
    assert task.score({"val_top1": 0.9, "val_loss": 9}) > task.score({"val_top1": 0.5,
                                                                      "val_loss": 0})
    assert task.predicts and "val_top1 0.5000" in task.describe({"val_top1": 0.5})


NO_LOSS = NET + "[convolutional]\nfilters=2\nsize=1\nactivation=linear\n"


def test_a_network_without_a_loss_is_a_located_error():
    with pytest.raises(CfgError) as err:
        task_for(build(NO_LOSS))
    where = err.value.first
    assert err.value.code == "E300" and "defines no loss" in where.message
    assert where.source == "[convolutional]"
    assert where.line == NO_LOSS.splitlines().index("[convolutional]") + 1


def test_a_detector_gets_the_detection_task():
    from darkcfg.train.detection import DetectionTask

    net = build(DETECTOR)
    task = task_for(net, config(net))
    assert isinstance(task, DetectionTask) and task.heads == (1,) and task.outputs == 1
    assert task.best == "val_map50" and "val_map50_95" in task.columns
    assert "h1_avg_iou" in task.columns


def test_label_smoothing_is_the_classify_tasks_truth():
    net = build(TWO_HEADS)
    task = task_for(net, config(net))
    smooth = ClassifyTask(task.outputs, task.inputs, task.heads, label_smooth_eps=0.3)
    truth = smooth.truth(torch.tensor([2, 0]), torch.zeros(2, 3))
    torch.testing.assert_close(truth, torch.tensor([[0.15, 0.15, 0.7], [0.7, 0.15, 0.15]]))


@dataclass
class CountingTask(Task):
    """A detection-shaped task: its heads take `seen`, and it reports a statistic per step."""

    name = "counting"
    stats = ("mean_seen",)

    def loss(self, net, x, targets, seen=0):
        self.seen_log.append(seen)
        inputs = self.head_inputs(net, x)
        total = sum((inputs[i] - targets).pow(2).sum() / len(x) for i in self.heads)
        return total, {"mean_seen": torch.tensor(float(seen))}

    seen_log: list = None  # type: ignore[assignment]


def test_a_new_task_plugs_into_the_trainer(monkeypatch):
    """What a detection task needs: registered once in TASKS, it gets Darknet's `seen` per
    mini-batch (images so far, this one included) and its stats reach `trainer.stats`."""
    net = build(REGRESSOR.replace("batch=2", "batch=4\nsubdivisions=2"))
    monkeypatch.setattr(net.layers[1], "loss_target", "counted")
    monkeypatch.setitem(tasks.TASKS, "counted", CountingTask)
    trainer = Trainer(net, config(net))
    assert isinstance(trainer.task, CountingTask)
    trainer.task.seen_log = []
    for _ in range(2):
        trainer.step(torch.rand(4, 3), torch.rand(4, 2))
    assert trainer.task.seen_log == [2, 4, 6, 8]  # two mini-batches of 2 per iteration
    assert float(trainer.stats["mean_seen"]) == pytest.approx((6 + 8) / 2)
    assert trainer.task.columns[len(tasks.STEP_COLUMNS)] == "mean_seen"


def test_heads_of_different_tasks_or_an_unknown_one_are_located_errors(monkeypatch):
    net = build(TWO_HEADS)
    monkeypatch.setattr(net.layers[1], "loss_target", "values")
    with pytest.raises(CfgError) as err:
        task_for(net)
    assert "'values' but the last loss layer's with 'classes'" in err.value.first.message
    assert err.value.first.line == TWO_HEADS.splitlines().index("[softmax]") + 1
    monkeypatch.setattr(net.layers[1], "loss_target", "pixels")
    monkeypatch.setattr(net.layers[4], "loss_target", "pixels")
    with pytest.raises(CfgError, match="no training task for losses against 'pixels'"):
        task_for(net)


def test_top1_top5_of_tied_scores_count_as_darknets_top_k():
    # a saturated or untrained net: every class scores 1/10. Darknet's top_k keeps the first of
    # equal scores, so top-1 is class 0 and top-5 classes 0..4; torch.topk chose 8 and 5..9
    net = build(NET + "[connected]\noutput=10\nactivation=linear\n[softmax]\n")
    for p in net.layers[0].unit.linear.parameters():
        torch.nn.init.zeros_(p)
    task = task_for(net, config(net))
    x, y = torch.rand(7, 1, 2, 2), torch.tensor([0, 1, 2, 3, 4, 0, 9])
    loss, top1, top5 = task.batch_sums(net, x, y, net(x, collect=[0, 1])).tolist()
    assert (top1, top5) == (2, 6)
    assert loss == pytest.approx(7 * torch.tensor(10.0).log().item(), rel=1e-5)
    values, classes = tasks.ranked(torch.tensor([[0.1, 0.3, 0.3, 0.0, 0.3]]), 4)
    assert classes.tolist() == [[1, 2, 4, 0]] and values.sum().item() == pytest.approx(1.0)
