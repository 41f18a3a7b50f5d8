"""cfgparse: Darknet .cfg text -> typed, located blocks. Imports no torch."""

from .blocks import Block, Option
from .errors import CfgError, Diagnostic
from .parser import ParseResult, parse, parse_text
from .writer import edit, to_yaml, write
from .yaml_io import blocks_from_yaml

__all__ = ["Block", "CfgError", "Diagnostic", "Option", "ParseResult", "blocks_from_yaml", "parse",
           "edit", "parse_text", "to_yaml", "write"]
