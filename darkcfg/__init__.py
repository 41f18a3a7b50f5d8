"""darkcfg: Darknet .cfg models in PyTorch, the jobs above the compiler core.

The compiler core is two top-level packages: `cfgparse` (text -> blocks, no torch) and `builders`
(blocks -> nn.Module, .weights, summary). Everything else lives here, one sub-package per job:

    darkcfg.config   the [net] reader (NetConfig) and the pure lr schedule `lr_at`
    darkcfg.model    loading a model for any command: cfg + overrides + weights + device
    darkcfg.data     data sources -> samples -> task augmentation (classifier and detection)
    darkcfg.train    the trainer: tasks, step and loop, checkpoints, run outputs, DDP
    darkcfg.detect   decoding, NMS, mAP and the detect command
    darkcfg.export   ONNX / torch.export, the emitted PyTorch module, layer dumps
    darkcfg.lint     `darkcfg check`, the cfg linter
    darkcfg.cli      the command line (subcommands, and runner.py's flag form)
"""
