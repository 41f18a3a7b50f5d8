"""cfgparse: Darknet .cfg text -> typed, located blocks. Imports no torch."""

from .blocks import Block, Option
from .errors import CfgError, Diagnostic
from .parser import ParseResult, parse, parse_text
from .writer import blocks_from_yaml, to_yaml, write

__all__ = ["Block", "CfgError", "Diagnostic", "Option", "ParseResult", "blocks_from_yaml", "parse",
           "parse_text", "to_yaml", "write"]
