"""cfgparse: Darknet .cfg text -> typed, located blocks. Imports no torch."""

from .blocks import Block, Option
from .errors import CfgError, Diagnostic
from .parser import ParseResult, parse, parse_text

__all__ = ["Block", "CfgError", "Diagnostic", "Option", "ParseResult", "parse", "parse_text"]
