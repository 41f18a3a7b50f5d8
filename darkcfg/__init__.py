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

From Python (README "In Python"; each name has its own help()):

    builders.build(path_or_text)                  a cfg -> Network, a plain nn.Module
    net(x)                                        x of shape net.expected_input()
    builders.weights.load_weights(net, path)      Darknet .weights in; save_weights out
    darkcfg.model.ModelSpec(cfg, weights=).load() a net, its weights, on its device, eval
    darkcfg.detect.decode.detect(net, images)     boxes on images, as `darkcfg detect`
    darkcfg.export.onnx.export(net, "m.onnx")     ONNX or .pt2, checked against the net
    builders.register_section(name, builder)      a section type of your own
    cfgparse.parse(path_or_text)                  the typed, located blocks (no torch)

Bad input (a cfg, a weights file, a path) raises cfgparse.CfgError, whose str() is the located
diagnostic; an input net(x) cannot take raises builders.InputError naming the expected shape.
Importing these packages prints nothing and changes no torch, signal or logging setting.
"""
