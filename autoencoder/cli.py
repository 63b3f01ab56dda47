"""The one command pattern every command line follows, and the errors a user can cause.

flags -> a typed config dataclass (``dataclass_from_flags``: unknown flags, wrong types,
non-finite numbers and values out of range are refused) -> checks -> the output folder
claimed (``claim_output``: writable, not someone else's, locked against a second writer)
-> ``config.json`` -> the work. ``run_cli`` turns every ``UserError`` and every
``OSError`` (a read-only folder, a full disk) into one line on stderr and exit status 2.

Values read from files go through the same coercion (``load_config``, ``finite``), so a
NaN in a file is refused where it enters, like a flag.

Example: ``python -c "from autoencoder.cli import run_cli, UserError; run_cli(lambda: (_ for _ in ()).throw(UserError('x')))"``
"""
from __future__ import annotations

import atexit
import dataclasses
import errno
import fcntl
import json
import math
import os
import sys
import typing
from pathlib import Path
from typing import Any, Callable

CONFIG_FILE = "config.json"


class UserError(Exception):
    """Bad input (a flag, a file, a folder); the message says what was wrong and what to do."""


class ConfigError(UserError, ValueError):
    """A flag or config value that cannot be used; the message says what to do."""


class HelpRequested(Exception):
    """``--help`` among the flags: ``text`` is the command's usage, printed by ``run_cli`` (exit status 0)."""

    def __init__(self, text: str):
        super().__init__(text)
        self.text = text


def field_comments(kind: type) -> dict[str, str]:
    """The ``# comment`` after each field of the dataclass ``kind`` in its source (empty where there is none)."""
    import inspect
    import re

    try:
        lines = inspect.getsource(kind).splitlines()
    except (OSError, TypeError):
        return {}
    comments, last = {}, None
    for line in lines:
        match = re.match(r"\s+(\w+)\s*:[^#]*?(?:#\s*(.*))?$", line)
        if match and match[1] in {f.name for f in dataclasses.fields(kind)}:
            last = match[1]
            comments[last] = match[2] or ""
        elif last and re.match(r"\s+#\s*(.*)$", line):  # a comment continued on the next line
            comments[last] += " " + line.strip().lstrip("#").strip()
    return comments


def usage(kind: type) -> str:
    """The usage of the running command: its module's first docstring paragraph and every flag of ``kind`` with
    its type, default and comment."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    name = f"python -m {spec.name.removesuffix('.__main__')}" if spec and spec.name else Path(sys.argv[0]).name
    about = (getattr(main, "__doc__", "") or "").strip().split("\n\n")[0]
    comments = field_comments(kind)
    lines = [f"usage: {name} [--FLAG VALUE ...]", "", about, "", f"flags (the fields of {kind.__name__}):"]
    for field in dataclasses.fields(kind):
        default = field.default if field.default is not dataclasses.MISSING else "(required)"
        kind_name = getattr(field.type, "__name__", str(field.type))
        lines.append(f"  --{field.name} {kind_name} = {default!r}" + (f": {comments[field.name]}"
                                                                       if comments.get(field.name) else ""))
    return "\n".join(lines)


def fire_command(main: Callable[..., Any]) -> None:
    """Run a command's ``main`` through python-fire, after refusing in one line what fire would misread: ``--``
    (fire takes what follows as its own flags) and a word that starts with a single minus (read as a flag)."""
    import re

    for token in sys.argv[1:]:
        if token == "--":
            print("error: -- starts python-fire's own flags here; give a value that starts with a minus as "
                  "--FLAG=-value (e.g. --expression=-horse)", file=sys.stderr)
            raise SystemExit(2)
        if re.match(r"^-[A-Za-z_(]", token) and token != "-h":
            print(f"error: {token} is read as a flag because it starts with a minus; give it as --FLAG={token} "
                  f"(e.g. --expression={token})", file=sys.stderr)
            raise SystemExit(2)
    import fire

    fire.Fire(main)


def os_error_line(error: OSError) -> str:
    """One line for an OSError: what failed, on which file, and what to do."""
    where = f" {error.filename}" if error.filename else ""
    reason = error.strerror or str(error) or type(error).__name__
    fix = {errno.ENOSPC: "free some space and run the command again (finished outputs were kept)",
           errno.EACCES: "choose a folder you can write to, or fix its permissions",
           errno.EROFS: "choose a folder on a writable disk",
           errno.EDQUOT: "free some space and run the command again"}.get(error.errno, "check the path and run again")
    return f"cannot use{where}: {reason}; {fix}"


def run_cli(call: Callable[[], Any], is_main: bool = True) -> Any:
    """Run a command's body; a UserError or an OSError becomes one line on stderr and exit status 2.

    ``is_main``: under torchrun only rank 0 prints.
    """
    try:
        return call()
    except HelpRequested as wanted:
        if is_main:
            print(wanted.text)
        raise SystemExit(0) from None
    except UserError as error:
        message = str(error)
    except OSError as error:
        message = os_error_line(error)
    if is_main:
        print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def command(kind: type, flags: dict[str, Any], body: Callable[[Any], Any], check: Callable | None = None,
            is_main: bool = True) -> Any:
    """The command pattern in one call: ``flags`` -> a ``kind`` config (unknown flags, types and ``check``
    refused) -> ``body(config)``, which claims its output and saves the config; errors are one line."""
    def build_and_run() -> Any:
        config = dataclass_from_flags(kind, {}, flags)
        if check is not None:
            check(config)
        return body(config)
    return run_cli(build_and_run, is_main)


def coerce(name: str, value: Any, kind: type) -> Any:
    """Turn a flag or file value (fire may give str, int, float, tuple...) into the field's type.

    Non-finite numbers (nan, inf, 1e999) and fractional or boolean values for integer
    fields are refused here, where they enter, so that no command silently works on them.
    """
    if kind is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("true", "1", "yes"):
            return True
        if str(value).lower() in ("false", "0", "no"):
            return False
        raise ConfigError(f"--{name} takes true or false, got {value!r}")
    if kind is str:
        if isinstance(value, (tuple, list)):
            return ",".join(str(v) for v in value)  # fire reads "horse,bird" as a tuple
        if isinstance(value, (dict, bool)) or value is None:
            raise ConfigError(f"--{name} takes text, got {value!r}")
        return str(value)
    if isinstance(value, bool) or isinstance(value, (tuple, list, dict)) or value is None:
        raise ConfigError(f"--{name} takes a {kind.__name__}, got {value!r}")
    number = finite(f"--{name}", value, kind.__name__)
    if kind is int:
        if isinstance(value, int):
            return value
        if not number.is_integer():
            raise ConfigError(f"--{name} takes a whole number, got {value!r}")
        try:
            return int(str(value)) if isinstance(value, str) else int(number)
        except ValueError:
            return int(number)  # "1e3"
    return number


def finite(label: str, value: Any, what: str = "number") -> float:
    """``value`` as a finite float; NaN, infinities and non-numbers are a ConfigError naming ``label``
    (``--flag`` for a flag, ``FILE: field`` for a value read from a file)."""
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{label} takes a {what}, got {value!r}") from None
    if not math.isfinite(number):
        raise ConfigError(f"{label} must be a finite number, got {value!r}")
    return number


def command_line_flags() -> list[str]:
    """The ``--name`` tokens of this process's command line when it runs one of the project's commands (a module of
    this repository as ``__main__``); [] otherwise (under pytest, or a call from Python)."""
    return [name for name, _ in command_line_pairs()]


def command_line_pairs() -> list[tuple[str, str | None]]:
    """(name, the raw text after it or None) for each ``--name`` of the command line (see command_line_flags)."""
    main = sys.modules.get("__main__")
    file = getattr(main, "__file__", None)
    root = Path(__file__).resolve().parent.parent
    if not file or root not in Path(file).resolve().parents or "tests" in Path(file).resolve().parts:
        return []
    pairs, argv = [], sys.argv[1:]
    for i, token in enumerate(argv):
        if token == "--":
            break
        if token.startswith("--") and len(token) > 2:
            name, equals, value = token[2:].partition("=")
            following = argv[i + 1] if i + 1 < len(argv) and not argv[i + 1].startswith("--") else None
            pairs.append((name.replace("-", "_"), value if equals else following))
    return pairs


def fire_reading(text: str) -> Any:
    """What python-fire makes of a flag's text (it reads Python literals: "(horse)" is "horse", "[1]" a list)."""
    try:
        from fire import parser
    except ImportError:
        return text
    return parser.DefaultParseValue(text)


def refuse_repeated_flags(names: list[str], fields: set[str]) -> None:
    """A flag of ``fields`` given twice is refused: the command line would otherwise keep the last silently."""
    seen: set[str] = set()
    for name in names:
        plain = name[2:] if name.startswith("no") and name[2:] in fields and name not in fields else name
        if plain in seen and plain in fields:
            raise ConfigError(f"--{plain} is given twice; give each flag once")
        seen.add(plain)


def dataclass_from_flags(kind: type, base: dict[str, Any], flags: dict[str, Any]) -> Any:
    """An instance of the config dataclass ``kind``: ``base`` values, then ``flags`` coerced to
    each field's type; an unknown flag is a ConfigError that lists the known ones."""
    types = typing.get_type_hints(kind)
    if "help" in flags or "h" in flags:
        raise HelpRequested(usage(kind))
    refuse_repeated_flags(command_line_flags(), set(types))
    unknown = sorted(set(flags) - set(types))
    if unknown:
        raise ConfigError(f"unknown flag(s) {', '.join('--' + u for u in unknown)}; "
                          f"known flags: {', '.join('--' + f for f in types)}")
    values = dict(base)
    raw = {name: text for name, text in command_line_pairs() if text is not None}
    for name, value in flags.items():
        if types[name] is str and name in raw and value != raw[name] and fire_reading(raw[name]) == value:
            value = raw[name]  # python-fire read this flag's text as a Python literal ("(horse)" -> "horse"): the text
        values[name] = coerce(name, value, types[name])
    return kind(**values)


def check_ranges(config: Any, ranges: dict[str, tuple[float, float]]) -> None:
    """Refuse a field outside its inclusive range, naming the flag and the range."""
    for name, (low, high) in ranges.items():
        value = getattr(config, name)
        if not low <= value <= high:
            raise ConfigError(f"--{name} must be between {low:g} and {high:g}, got {value!r}")


def check_choice(name: str, value: str, choices: typing.Sequence[str]) -> None:
    """Refuse a value that is not one of ``choices``, listing them."""
    if value not in choices:
        raise ConfigError(f"--{name} must be one of {', '.join(choices)}, got {value!r}")


def save_config(config: Any, path: str | Path) -> None:
    """A config dataclass as JSON, replaced atomically."""
    from autoencoder.atomic import write_text

    write_text(json.dumps(dataclasses.asdict(config), indent=2) + "\n", Path(path))


def read_json(path: str | Path, what: str = "file") -> Any:
    """A JSON file; a missing, unreadable or damaged one is a ConfigError naming it. Its numbers are
    checked where they are used (``coerce``, ``finite``)."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path} is missing") from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as error:
        raise ConfigError(f"{path} is damaged or not a {what} ({type(error).__name__}: "
                          f"{str(error)[:120]})") from None


def load_config(path: str | Path, kind: type, check: Callable | None = None, strict: bool = False) -> Any:
    """A saved config, every field type- and range-checked like a flag.

    Fields added since the file was written take their defaults; a file that shares no field
    with ``kind`` is refused as not that config. Keys ``kind`` does not know are refused when
    ``strict`` (a file a person writes, such as a compose recipe: a misspelt key must not pass
    silently) and skipped otherwise (``kind`` reads a part of a larger config, as RunConfig of a
    training config). ``check`` validates the result. A bad value is a ConfigError naming the
    file and the field.
    """
    values = read_json(path, "config file")
    known = set(typing.get_type_hints(kind))
    if not isinstance(values, dict) or (values and not known & set(values)):
        raise ConfigError(f"{path} is not a {kind.__name__} file (none of its fields are there)")
    unknown = sorted(set(values) - known)
    if strict and unknown:
        import difflib

        close = difflib.get_close_matches(unknown[0], sorted(known), n=1)
        raise ConfigError(f"{path} has the unknown key {unknown[0]!r}"
                          f"{' (did you mean ' + repr(close[0]) + '?)' if close else ''}; a {kind.__name__} has "
                          f"{', '.join(sorted(known))}: rename or remove it")
    try:
        config = dataclass_from_flags(kind, {}, {k: v for k, v in values.items() if k in known})
        if check is not None:
            check(config)
    except UserError as error:  # a bad value, or a check's own error (a recipe's expression): named with the file
        raise ConfigError(f"{path}: {error}") from None
    return config


_HELD_LOCKS: dict[str, int] = {}


def lock_folder(folder: Path) -> None:
    """Hold an exclusive lock on ``folder`` for the life of this process: a second writer is refused.

    The lock file sits beside the folder (``.NAME.lock``), so a folder that is replaced whole
    keeps its lock.
    """
    folder = Path(folder).resolve()
    key = str(folder)
    if key in _HELD_LOCKS:
        return
    folder.parent.mkdir(parents=True, exist_ok=True)
    lock = lock_file(folder)
    try:  # O_NOFOLLOW: a link planted at the lock's name is never followed (it would create a file elsewhere)
        handle = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as error:
        if error.errno != errno.ELOOP:
            raise
        raise ConfigError(f"{lock} is a link, not a lock this project made; nothing was written: remove the link "
                          f"(rm {lock}) and run the command again") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(handle)
        raise ConfigError(f"{folder} is being written by another command; wait for it to finish, "
                          f"or pass another --out") from None
    _HELD_LOCKS[key] = handle


def lock_file(folder: Path) -> Path:
    return folder.parent / f".{folder.name}.lock"


def release_folder(folder: Path) -> None:
    """Drop the lock ``lock_folder`` took, and its file, once the command's writing is done."""
    folder = Path(folder).resolve()
    handle = _HELD_LOCKS.pop(str(folder), None)
    if handle is not None:
        lock_file(folder).unlink(missing_ok=True)  # before the close: a waiting writer then fails, never mixes
        os.close(handle)


@atexit.register
def release_all_folders() -> None:
    """Drop every lock this process holds (at exit; called directly by a process that ends without teardown)."""
    for key in list(_HELD_LOCKS):
        release_folder(Path(key))


def check_writable(folder: Path) -> None:
    """Refuse, before any work, a folder (or its nearest existing parent) that cannot be written."""
    place = Path(folder)
    while not place.exists() and place != place.parent:
        place = place.parent
    if not place.is_dir():
        raise ConfigError(f"{place} is a file, so {folder} cannot be made; pass another --out")
    probe = place / f".write-probe{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise ConfigError(f"cannot write in {place} ({error.strerror}); choose a folder you can write to, "
                          f"nothing was computed") from None


def refuse_link_or_file(out: Path, why_not_a_link: str) -> None:
    """Refuse an --out that is a link (``why_not_a_link`` says why a command never writes through one) or a file."""
    if out.is_symlink():
        raise ConfigError(f"--out {out} is a link (to {os.readlink(out)}); {why_not_a_link}: pass the folder it "
                          f"points to, or a new --out")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder; pass a new --out")


def claim_output(out: str | Path, own_files: typing.Iterable[str] | None, what: str,
                 config: Any = None) -> Path:
    """Claim a command's output folder before any work, the same way for every command.

    The folder must be writable; when it exists, it may hold only ``own_files`` (names
    this command writes; None: any), so a folder the user made is never replaced; it is
    locked against a second writer; then ``config`` is saved in it as ``config.json``.
    """
    out = Path(out)
    refuse_link_or_file(out, "commands replace their output folder whole and never through a link")
    check_writable(out)
    lock_folder(out)
    if out.is_dir() and own_files is not None:
        allowed = set(own_files) | {CONFIG_FILE}
        from autoencoder.atomic import is_temporary  # here: atomic imports torch, this module stays light

        foreign = sorted(p.name for p in out.iterdir() if p.name not in allowed and not is_temporary(p.name))
        if foreign:
            release_folder(out)
            raise ConfigError(f"--out {out} is not empty and not {what} output (it holds {foreign[0]}); "
                              f"nothing was written: pass a new --out")
    if config is not None:
        out.mkdir(parents=True, exist_ok=True)
        save_config(config, out / CONFIG_FILE)
    return out
