"""The argument parser of every command line (darkcfg's commands, the linter, `python -m
cfgparse dump`): usage errors as one E100 diagnostic. Here, below darkcfg, so that cfgparse's
own command line can use it; torch-free."""

from __future__ import annotations

import argparse
import difflib
import re
import sys

from .schema import ValueProblem, read_number


class CommandParser(argparse.ArgumentParser):
    """argparse.ArgumentParser whose usage errors print one diagnostic and exit 2, as every
    other bad input to darkcfg does:

        <command line>: error[E100]: darkcfg train: unrecognized arguments: --wokers 2
        help: did you mean '--workers'?

    Sub-parsers (`add_subparsers().add_parser`) are of this class too. Abbreviated options are
    not taken (`--dat` is not `--data`): a typo must not quietly start a different run."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        # argparse looks a type up in this registry first: `type=int` / `type=float` take
        # decimal digits, as Darknet's atoi/atof read its flags (Python's int() reads `1_0` as
        # 10 and `١` as 1, float() `nan` and `0.2_5`)
        self.register("type", int, _flag_int)
        self.register("type", float, _flag_float)

    def parse_args(self, args=None, namespace=None):
        """As argparse's, but an unknown option after a subcommand is that subcommand's error
        (`darkcfg data check: ...`, with its options' nearest), not the top parser's."""
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            (self._chosen_subcommand(parsed) or self).error(
                f"unrecognized arguments: {' '.join(extras)}")
        return parsed

    def _chosen_subcommand(self, parsed: argparse.Namespace) -> CommandParser | None:
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                chosen = action.choices.get(getattr(parsed, action.dest, None))
                if isinstance(chosen, CommandParser):
                    return chosen._chosen_subcommand(parsed) or chosen
        return None

    def error(self, message: str):
        sys.stderr.write(f"<command line>: error[E100]: {self.prog}: {message}\n"
                         f"help: {self._hint(message)}\n")
        self.exit(2)

    def _hint(self, message: str) -> str:
        """What to do about `message` (argparse's text): the nearest option to a misspelt one,
        what a rejected value's option takes (its help), or where the options are listed."""
        options = self._option_string_actions
        if message.startswith("unrecognized arguments:"):
            unknown = [w.split("=")[0] for w in message.split(":", 1)[1].split()
                       if w.startswith("-")]
            for word in unknown:
                near = difflib.get_close_matches(word, list(options), n=1, cutoff=0.75)
                if near:
                    return f"did you mean '{near[0]}'?"
        named = re.match(r"argument (\S+?)(?:/\S+)?: ", message)
        action = options.get(named.group(1)) if named else None
        choice = re.search(r"invalid choice: '([^']*)'", message)
        if choice and named:
            action = action or next((a for a in self._actions if a.dest == named.group(1)), None)
            near = difflib.get_close_matches(choice.group(1), [str(c) for c in
                                             getattr(action, "choices", None) or ()], n=1)
            if near:
                return f"did you mean '{near[0]}'?"
        if action is not None and action.help and action.help != argparse.SUPPRESS:
            what = f"{named.group(1)} {action.metavar}" if action.metavar else named.group(1)
            try:  # a help text may name %(default)s and the like, as argparse expands them
                return f"{what}: {action.help % dict(vars(action), prog=self.prog)}"
            except (KeyError, TypeError, ValueError):
                return f"{what}: {action.help}"
        return f"`{self.prog} --help` lists the options"


def _flag_number(text: str, integer: bool):
    try:
        return read_number(text, integer)
    except ValueProblem as exc:
        raise argparse.ArgumentTypeError(f"{exc}; {exc.hint}") from None


def _flag_int(text: str) -> int:
    if _DIGITS.match(text):  # (no C int bound: --seed takes 64 bits; each flag checks its range)
        return int(text)
    return _flag_number(text, True)


_DIGITS = re.compile(r"[+-]?[0-9]{1,4000}\Z")


def _flag_float(text: str) -> float:
    return _flag_number(text, False)
