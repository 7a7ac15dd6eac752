"""The command line every musicsim command shares (absl flags).

Every entry point (``python -m data_prep.build``, ``experiments.run|report|export|recommended``,
``musicsim.index|search|serve|scan`` and their ``musicsim-*`` console scripts) answers the same way:

- ``--help`` (``-h``, ``--helpshort``, ``--helpfull``) prints the command's docstring and its own flags,
  exit 0, before any required flag is checked;
- misuse (an unknown flag, a missing required flag, a value outside its choices, a number that is
  not finite or out of range) prints one line ``error: <what> (usage: ...)`` on stderr, exit 2.

Commands with a ``FlagValues`` of their own parse with `parse_command_line` and run under
`run_command`; the commands whose flags live on absl's global ``FLAGS`` (``experiments.run``,
``experiments.report``, ``data_prep.build``) hand `global_flags_parser` to ``absl.app.run``. Numeric
flags are checked by validators `check_numeric_flags` registers, with `Bounds` per flag.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from dataclasses import fields as dataclass_fields
from types import ModuleType
from typing import Callable, Mapping, NoReturn, Sequence

from absl import app, flags

USAGE_EXIT_STATUS = 2
HELP_ARGUMENTS = frozenset({"--help", "-help", "-h", "-?", "--helpshort", "--helpfull"})


@dataclass(frozen=True)
class Bounds:
    """The range a numeric flag's value must lie in (besides being finite); None: unbounded.

    Attributes
    ----------
    lower, upper : the ends of the range
    lower_open, upper_open : whether that end itself is excluded (``> 0`` rather than ``>= 0``)
    integer : list flags: each item must be a whole number (an integer flag's value always is)
    """

    lower: float | None = None
    upper: float | None = None
    lower_open: bool = False
    upper_open: bool = False
    integer: bool = False

    def contains(self, value: float) -> bool:
        """Whether the finite ``value`` lies in the range."""
        if self.lower is not None and (value <= self.lower if self.lower_open else value < self.lower):
            return False
        if self.upper is not None and (value >= self.upper if self.upper_open else value > self.upper):
            return False
        return True

    def describe(self, *, integer: bool = False) -> str:
        """The range in words, as a value must be: ``'a positive integer'``, ``'in [0, 1]'``, ``'>= 2'``."""
        integer = integer or self.integer
        if self.upper is None and self.lower == 0:
            return f"a {'positive' if self.lower_open else 'non-negative'} {'integer' if integer else 'number'}"
        if self.upper is None and integer and self.lower == 1 and not self.lower_open:
            return "a positive integer"
        if self.lower is not None and self.upper is not None:
            return (f"in {'(' if self.lower_open else '['}{self.lower:g}, "
                    f"{self.upper:g}{')' if self.upper_open else ']'}")
        if self.lower is not None:
            return f"{'>' if self.lower_open else '>='} {self.lower:g}"
        if self.upper is not None:
            return f"{'<' if self.upper_open else '<='} {self.upper:g}"
        return "a finite number"


POSITIVE = Bounds(lower=0, lower_open=True)
NON_NEGATIVE = Bounds(lower=0)
AT_LEAST_ONE = Bounds(lower=1)
FRACTION = Bounds(lower=0, upper=1)
ANY_FINITE = Bounds()
SEED = Bounds(lower=0, upper=2**32 - 1)  # numpy's seeds


def numeric_value_problem(value: float | int | None, *, name: str, bounds: Bounds,
                          integer: bool = False) -> str | None:
    """Why ``value`` of ``name`` is not a finite number within ``bounds``, e.g. ``'k must be a positive
    integer, got 0'`` (None when it is, or when it is unset)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{name} must be a number, got {value!r}"
    if not math.isfinite(value):
        extra = "" if (bounds.lower, bounds.upper) == (None, None) else f" ({bounds.describe(integer=integer)})"
        return f"{name} must be a finite number{extra}, got {value}"
    if not bounds.contains(value):
        return f"{name} must be {bounds.describe(integer=integer)}, got {value:g}"
    return None


def _flag_names(flag_values: flags.FlagValues, module: ModuleType | str | None) -> set[str]:
    if module is None:
        return set(flag_values)
    return {flag.name for flag in flag_values.get_flags_for_module(module)}


def check_numeric_flags(flag_values: flags.FlagValues, *, bounds: Mapping[str, Bounds],
                        module: ModuleType | str | None = None) -> None:
    """Register absl validators: every numeric flag must be finite and within its ``bounds``.

    A bad value then fails the parse (``flags.IllegalFlagValueError``: `parse_command_line` and
    `global_flags_parser` answer it with one line and exit 2), and so does a later assignment.

    Parameters
    ----------
    flag_values : absl.flags.FlagValues
        Where the command's flags are defined (absl's global ``FLAGS`` too).
    bounds : mapping of str to Bounds
        Flag name -> its range. Every integer or float flag of the command must be named (a new
        numeric flag without a range is a programming error, raised here at import); a list flag
        named here must hold numbers, each within the range.
    module : module or str, optional
        With absl's global ``FLAGS``: only this module's flags are the command's (absl's own
        ``--verbosity`` and such are not checked).

    Raises
    ------
    ValueError
        When a numeric flag has no bounds, or a named flag is not defined or neither numeric nor a list.
    """
    names = _flag_names(flag_values, module)
    numeric = {name for name in names if isinstance(flag_values[name].parser, (flags.IntegerParser, flags.FloatParser))}
    missing = sorted(numeric - set(bounds))
    if missing:
        raise ValueError(f"numeric flags without bounds: --{', --'.join(missing)}")
    for name, flag_bounds in bounds.items():
        if name not in names:
            raise ValueError(f"bounds for --{name}, which is not a flag of this command")
        flag = flag_values[name]
        if isinstance(flag, flags.MultiFlag) or isinstance(flag.parser, flags.ListParser):
            validator = _list_validator(name, flag_bounds)
        elif name in numeric:
            validator = _scalar_validator(name, flag_bounds,
                                          integer=isinstance(flag.parser, flags.IntegerParser))
        else:
            raise ValueError(f"--{name} is neither a numeric nor a list flag")
        flags.register_validator(name, validator, flag_values=flag_values)


def _scalar_validator(name: str, bounds: Bounds, *, integer: bool) -> Callable[[object], bool]:
    def validate(value) -> bool:
        problem = numeric_value_problem(value, name=name, bounds=bounds, integer=integer)
        if problem:
            raise flags.ValidationError(problem)
        return True

    return validate


def _list_validator(name: str, bounds: Bounds) -> Callable[[object], bool]:
    def validate(values) -> bool:
        for item in values or ():
            try:
                number = float(item)
            except (TypeError, ValueError):
                raise flags.ValidationError(f"{name} must list numbers, got {item!r}") from None
            problem = numeric_value_problem(number, name=f"each of {name}", bounds=bounds)
            if not problem and bounds.integer and not number.is_integer():
                problem = f"each of {name} must be {bounds.describe()}, got {item}"
            if problem:
                raise flags.ValidationError(problem)
        return True

    return validate


def one_line(text: str) -> str:
    """``text`` on one line: its lines stripped and joined with `` | ``."""
    return " | ".join(line.strip() for line in str(text).splitlines() if line.strip())


def usage_error(message: str, *, usage: str) -> int:
    """Print a misuse as one line on stderr, ``error: MESSAGE (USAGE)``; returns the exit status, 2."""
    print(f"error: {one_line(message)} ({one_line(usage)}; --help lists the flags)", file=sys.stderr)
    return USAGE_EXIT_STATUS


def print_help(*, doc: str, flag_help: str) -> None:
    """What ``--help`` prints: the command's docstring, then its flags."""
    print((doc or "").rstrip())
    print()
    print(flag_help)


def parse_command_line(flag_values: flags.FlagValues, argv: Sequence[str], *, doc: str, usage: str,
                       positional: bool = False) -> list[str] | int:
    """Parse ``argv`` (the program name first, as ``app.run`` passes it) into ``flag_values``.

    Parameters
    ----------
    flag_values : absl.flags.FlagValues
        The command's own flags (``--help`` prints them).
    argv : sequence of str
        The command line, program name first.
    doc : str
        What ``--help`` prints above the flags (the command's module docstring).
    usage : str
        The command's usage, printed (on one line) after a usage error's message.
    positional : bool
        Whether the command takes arguments besides its flags (a usage error otherwise).

    Returns
    -------
    list of str or int
        The positional arguments after the program name; or the exit status when the command
        should stop: 0 after ``--help``, 2 after a bad flag or value (one line on stderr).
    """
    if HELP_ARGUMENTS & set(argv[1:]):  # before the required flags are checked
        print_help(doc=doc, flag_help=flag_values.get_help(include_special_flags=False))
        return 0
    try:
        flag_values.unparse_flags()
        arguments = flag_values(list(argv))[1:]
        if arguments and not positional:
            raise flags.Error(f"unexpected arguments {arguments}")
    except flags.Error as error:
        return usage_error(str(error), usage=usage)
    return arguments


def _program_name_only(argv: list[str]) -> list[str]:
    """``app.run``'s flag parser for a command whose flags are its own: absl's global flags get the
    program name alone (and WARNING verbosity, the quiet output these commands always had)."""
    flags.FLAGS([argv[0], "--verbosity=-1"])
    return argv


def run_command(main: Callable[[list[str]], int]) -> NoReturn:
    """Run ``main(argv)`` (a command with a ``FlagValues`` of its own) under ``absl.app.run`` and exit
    with the status it returns."""
    app.run(main, flags_parser=_program_name_only)


def global_flags_parser(*, module: ModuleType | str, doc: str, usage: str,
                        known_only: bool = False) -> Callable[[list[str]], list[str]]:
    """``absl.app.run``'s ``flags_parser`` for a command whose flags are on absl's global ``FLAGS``.

    absl's own handling exits 1 on ``--help`` (listing only a usage line) and on every parse error
    (with ``FATAL Flags parsing error``); this parser prints the command's flags and exits 0 on help,
    and one line with exit 2 on misuse.

    Parameters
    ----------
    module : module or str
        The module defining the command's flags (``sys.modules[__name__]``: works under ``python -m``
        too, where absl files them under the script's path).
    doc, usage : str
        As `parse_command_line`.
    known_only : bool
        Leave flags no module defines in the returned arguments (``data_prep.build``: Beam's options).

    Returns
    -------
    callable
        ``argv -> [argv[0], *remaining arguments]``; exits the process on help or misuse.
    """

    def parse(argv: list[str]) -> list[str]:
        if HELP_ARGUMENTS & set(argv[1:]):
            flag_help = (flags.FLAGS.get_help() if "--helpfull" in argv[1:] else flags.FLAGS.module_help(module))
            print_help(doc=doc, flag_help=flag_help)
            sys.exit(0)
        try:
            return flags.FLAGS(list(argv), known_only=known_only)
        except flags.Error as error:
            sys.exit(usage_error(str(error), usage=usage))

    return parse


# ---------------------------------------------------------------------- commands with subcommands
# (``python -m musicsim.index build | add | remove``: one FlagValues, each subcommand taking some of its flags)
def parse_subcommand(flag_values: flags.FlagValues, argv: Sequence[str], *, doc: str, usage: str,
                     commands: Mapping[str, tuple[set[str], set[str]]],
                     extra_arguments: frozenset[str] = frozenset()) -> tuple[str, list[str]] | int:
    """Parse ``argv`` (program name first) as ``PROGRAM COMMAND --flags...`` into ``flag_values``.

    Parameters
    ----------
    flag_values, argv, doc, usage
        As `parse_command_line`.
    commands : mapping of str to (set of str, set of str)
        Each command's required flags and the optional ones it also takes; a flag given that its command
        does not take is a usage error.
    extra_arguments : frozenset of str
        The commands that take arguments after their flags (e.g. more ids after a multi flag).

    Returns
    -------
    (str, list of str) or int
        The command and its extra arguments; or the exit status when the command should stop: 0 after
        ``--help``, 2 after misuse (one line on stderr).
    """
    positional = parse_command_line(flag_values, argv, doc=doc, usage=usage, positional=True)
    if isinstance(positional, int):
        return positional
    command, extra = (positional[0], positional[1:]) if positional else (None, [])
    if command not in commands:
        return usage_error(f"expected a command, one of {sorted(commands)}, got {command!r}", usage=usage)
    required, optional = commands[command]
    given = {name for name in flag_values if flag_values[name].present}
    missing, foreign = sorted(required - given), [f"--{name}" for name in sorted(given - required - optional)]
    if extra and command not in extra_arguments:
        foreign.append(f"arguments {extra}")
    if missing or foreign:
        problems = ([f"{command} needs --{', --'.join(missing)}"] if missing else []) + (
            [f"{command} does not take {', '.join(foreign)}"] if foreign else [])
        return usage_error("; ".join(problems), usage=usage)
    return command, list(extra)


# ---------------------------------------------------------------------- flags from config classes
# (``experiments.run``: each hyperparameter is a config field, written once with its default and help,
# ``musicsim.params.hyperparameter``; its flag, its range and its value come from the field.)
NAMED_BOUNDS = {"positive": POSITIVE, "non_negative": NON_NEGATIVE, "at_least_one": AT_LEAST_ONE,
                "fraction": FRACTION, "open_fraction": Bounds(lower=0, upper=1, upper_open=True),
                "ratio": Bounds(lower=0, upper=1, lower_open=True), "any": ANY_FINITE, "seed": SEED,
                "sizes": Bounds(lower=1, integer=True)}


@dataclass(frozen=True)
class ConfigFlag:
    """One flag made from a config field (several configs may share it: ``--dropout``).

    Attributes
    ----------
    name : the flag's name
    fields : ``(config class, field name)`` of every config field it sets
    metadata : the first field's ``hyperparameter`` metadata
    """

    name: str
    fields: tuple[tuple[type, str], ...]
    metadata: Mapping

    def value(self, flag_values: flags.FlagValues):
        """The config value of the flag's parsed value (``off`` back to None/False, lists to tuples)."""
        value = flag_values[self.name].value
        if isinstance(value, list):
            if not value and self.metadata.get("empty_off"):
                return None
            return tuple(self.metadata.get("item", str)(item) for item in value)
        if "off" in self.metadata and value == self.metadata["off"]:
            return self.metadata.get("off_value")
        return value


def _flag_default(default, metadata: Mapping):
    if "off" in metadata and default == metadata.get("off_value"):
        return metadata["off"]
    if isinstance(default, tuple):
        return [f"{item:g}" if isinstance(item, float) else str(item) for item in default]
    return default


def _flag_type(field) -> type:
    """What a field's flag parses: its ``type`` metadata, else its default's type."""
    return field.metadata.get("type") or type(field.default)


def _default_bounds(field) -> str | None:
    """A numeric flag's range: its ``bounds``, else any finite number (a str or bool flag: none)."""
    if field.metadata.get("bounds"):
        return field.metadata["bounds"]
    if field.metadata.get("choices"):
        return None
    numeric = _flag_type(field) in (int, float) or field.metadata.get("item") in (int, float)
    return "any" if numeric and _flag_type(field) is not bool else None


def _define_config_flag(flag_values: flags.FlagValues, name: str, field, module_name: str | None) -> None:
    metadata, default = field.metadata, _flag_default(field.default, field.metadata)
    settings = dict(flag_values=flag_values, module_name=module_name)
    kind = _flag_type(field)
    if metadata.get("choices"):
        flags.DEFINE_enum(name, default, list(metadata["choices"]), metadata["help"], **settings)
    elif kind is bool:
        flags.DEFINE_boolean(name, default, metadata["help"], **settings)
    elif kind is int:
        flags.DEFINE_integer(name, default, metadata["help"], **settings)
    elif kind is float:
        flags.DEFINE_float(name, default, metadata["help"], **settings)
    elif kind in (tuple, list):
        flags.DEFINE_list(name, default, metadata["help"], **settings)
    else:
        flags.DEFINE_string(name, default, metadata["help"], **settings)


def define_config_flags(configs: Sequence[type], *, flag_values: flags.FlagValues = flags.FLAGS,
                        module_name: str | None = None) -> dict[str, ConfigFlag]:
    """Define a flag for every ``hyperparameter`` field of ``configs`` not defined yet; return them all.

    A field without ``hyperparameter`` metadata, or with ``flag=False``, is no flag (the run sets it).
    Two configs' fields of one name are one flag (they must share their default: ``musicsim.params``).
    Numeric flags get their range (``bounds``) as validators (`check_numeric_flags`).

    Returns
    -------
    dict
        Flag name -> `ConfigFlag`, in the order of ``configs`` and their fields.
    """
    found: dict[str, list] = {}
    metadata: dict[str, Mapping] = {}
    for config in configs:
        for field in dataclass_fields(config):
            if not field.metadata.get("help") or field.metadata.get("flag") is False:
                continue
            name = field.metadata.get("name", field.name)
            if (config, field.name) in found.get(name, ()):
                continue
            found.setdefault(name, []).append((config, field.name))
            if name in metadata:
                continue
            metadata[name] = field.metadata
            if name not in flag_values:
                _define_config_flag(flag_values, name, field, module_name)
                if _default_bounds(field):
                    _register_bounds(flag_values, name, NAMED_BOUNDS[_default_bounds(field)])
    return {name: ConfigFlag(name=name, fields=tuple(pairs), metadata=metadata[name]) for name, pairs in found.items()}


def _register_bounds(flag_values: flags.FlagValues, name: str, bounds: Bounds) -> None:
    """`check_numeric_flags`' validator of one flag."""
    flag = flag_values[name]
    if isinstance(flag.parser, flags.ListParser):
        validator = _list_validator(name, bounds)
    else:
        validator = _scalar_validator(name, bounds, integer=isinstance(flag.parser, flags.IntegerParser))
    flags.register_validator(name, validator, flag_values=flag_values)


def config_values(config_flags: Mapping[str, ConfigFlag], configs: Sequence[type], *,
                  flag_values: flags.FlagValues = flags.FLAGS) -> dict:
    """``{field: value}`` of the parsed flags that set a field of one of ``configs``."""
    values = {}
    for flag in config_flags.values():
        for config, field_name in flag.fields:
            if config in configs:
                values[field_name] = flag.value(flag_values)
    return values
