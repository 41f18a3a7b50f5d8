"""A plugin whose import fails (tests/test_plugins.py copies it next to a dist-info)."""

raise ImportError("needs a module that is not installed: fancy_kernels")
