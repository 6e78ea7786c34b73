"""The one way a value reaches a rendered job script: quoted for the exact spot it lands in.

A job script has two languages: `#SBATCH` lines, which sbatch itself parses (it splits at unquoted
spaces, strips quotes, and drops an unquoted `#` and what follows), and the bash body. A value from
a config, a path or the command line can hold spaces, quotes, `$(...)`, backticks, `#` or a line
break, and must arrive as exactly that text, never as shell or as another directive. So:

    sbatch_value("a b")     -> "a b"            (#SBATCH --job-name=...; a line break is refused)
    sbatch_directive(arg)   -> "#SBATCH " + one quoted argument
    word("$(id) x")         -> '$(id) x'         (one bash word; shlex.quote)
    trusted("srun ...")     -> shell this module's callers composed from words (or launch.setup,
                               which is shell by design)
    number(8)               -> 8
    render_template(name, {placeholder: one of the above})

`render_template` refuses a plain str: every placeholder must have gone through one of these, so a
new template value cannot skip quoting by accident.
NOTE: imports neither torch nor megatron (login nodes).
"""

from __future__ import annotations

import re
import shlex
from importlib import resources

from genlip_megatron.errors import InputError

PLACEHOLDER = re.compile(r"{{(\w+)}}")
_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PLAIN = re.compile(r"[A-Za-z0-9._/:=,+@%-]+")  # needs no quotes in an #SBATCH line


class Shell(str):
    """Text that is safe at the spot of the script it was made for (see the module docstring)."""


class QuotingError(InputError):
    """A value no quoting can carry to its spot (a line break in an #SBATCH line, a NUL)."""


def _no_nul(value: str, what: str) -> str:
    if "\x00" in value:
        raise QuotingError(f"{what}: holds a NUL character, which no script can carry")
    return value


def word(value: str, what: str = "value") -> Shell:
    """One bash word whatever `value` holds (single-quoted unless it is plainly safe)."""
    return Shell(shlex.quote(_no_nul(str(value), what)))


def sbatch_value(value: str, what: str = "value") -> Shell:
    """The value of an #SBATCH option: double-quoted with `"` and `\\` escaped, as sbatch unquotes it."""
    value = _no_nul(str(value), what)
    if "\n" in value or "\r" in value:
        raise QuotingError(f"{what}: holds a line break, which an #SBATCH line cannot carry")
    if _PLAIN.fullmatch(value):
        return Shell(value)
    return Shell('"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"')


def sbatch_directive(option: str, value: str | None = None, what: str = "value") -> Shell:
    """`#SBATCH --option=value` with the value quoted; `option` alone is one quoted argument."""
    if value is None:
        return Shell(f"#SBATCH {sbatch_value(option, what)}")
    if not re.fullmatch(r"--[a-z][a-z-]*", option):
        raise QuotingError(f"{option!r} is not an sbatch long option")
    return Shell(f"#SBATCH {option}={sbatch_value(value, what)}")


def export(key: str, value: str) -> Shell:
    if not _ENV_KEY.fullmatch(key):
        raise QuotingError(f"environment variable name {key!r} is not a shell variable name")
    return Shell(f"export {key}={word(value, key)}")


def number(value: int) -> Shell:
    if isinstance(value, bool) or not isinstance(value, int):
        raise QuotingError(f"{value!r} is not an integer")
    return Shell(str(value))


def trusted(text: str) -> Shell:
    """Shell text composed by the renderer from words, numbers and fixed text, or launch.setup."""
    return Shell(_no_nul(str(text), "shell text"))


def lines(items) -> Shell:
    items = list(items)
    if not all(isinstance(i, Shell) for i in items):
        raise TypeError("every line must be rendered through launch/quoting.py")
    return Shell("\n".join(items))


def render_template(name: str, values: dict[str, Shell]) -> str:
    """launch/templates/<name> with every {{placeholder}} replaced by its rendered value."""
    text = resources.files("launch").joinpath("templates", name).read_text()
    missing = sorted({m for m in PLACEHOLDER.findall(text) if m not in values})
    if missing:
        raise KeyError(f"template {name}: no value for {', '.join(missing)}")
    raw = sorted(k for k, v in values.items() if not isinstance(v, Shell))
    if raw:
        raise TypeError(f"template {name}: {', '.join(raw)} not rendered through launch/quoting.py")
    return PLACEHOLDER.sub(lambda m: values[m.group(1)], text)
