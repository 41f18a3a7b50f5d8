"""training: runner.py's trainer. [net] settings with Darknet's meaning (config), data sources and
augmentations (data), the step and loop (loop), run outputs (outputs), checkpoints (checkpoint),
torchrun/DDP (distributed), and the assembly of a run (session)."""
