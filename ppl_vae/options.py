"""What an option is: the :class:`Option` a config field carries, and the one way a value is coerced and checked.

Every option of :mod:`ppl_vae.config` is a dataclass field made by :func:`option`: its default and
its :class:`Option` (help, command-line flag, range, the registry its names come from). This module
reads that description and nothing else: :func:`coerce` turns command-line text or a TOML value
into the field's type, :func:`check_fields` checks a section's values against their options, and
:func:`options_of`, :func:`flag_of` and :func:`did_you_mean` let the command line and the config
files name them. Which options exist is :mod:`ppl_vae.config`'s.

Layer 2 — may import: ``ppl_vae.errors``; nothing that imports torch.

Example:
    >>> coerce("--epochs", int, "12")
    12
    >>> flag_of("latent_dim", Option("dimension L of z"))
    '--latent-dim'
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

from .errors import UserError

__all__ = [
    "Option",
    "option",
    "Section",
    "is_program_spec",
    "options_of",
    "flag_of",
    "did_you_mean",
    "parse_text",
    "coerce",
    "check_fields",
]


@dataclass(frozen=True)
class Option:
    """What a config field means and which values it takes.

    Attributes:
        help: one line for ``--help``.
        flag: the command-line flag (default ``--field-name``).
        names: the registry a name must come from (a function returning its names).
        also: another accepted form of a name: ``"data-file"`` (a ``.npy``/``.npz`` path),
            ``"program"`` (``path/to/file.py:factory``) or ``"device"`` (``cuda:N``); for a
            field without a registry, ``"count"``: a count N (also given as a number) or ``all``.
        low, high: the range of a number (inclusive unless ``open_low``/``open_high``).
        noun: what a name is called in messages (default: the field's name).
        switch: an ``auto | on | off`` option: ``--flag`` is on, ``--no-flag`` off, ``--flag auto`` auto.
    """

    help: str
    flag: str = ""
    names: Callable[[], Iterable[str]] | None = None
    also: str = ""
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    noun: str = ""
    switch: bool = False


def option(default: Any, help: str, **kwargs: Any) -> Any:
    """A dataclass field with a default and an :class:`Option` (``kwargs`` are its attributes)."""
    return field(default=default, metadata={"option": Option(help, **kwargs)})


def is_program_spec(text: str) -> bool:
    """Whether ``text`` names a user's program, ``path/to/file.py:factory``."""
    path, sep, attr = text.rpartition(":")
    return bool(sep and path.endswith(".py") and attr.isidentifier())


_ALSO: dict[str, tuple[Callable[[str], bool], str]] = {
    "data-file": (lambda s: s.endswith((".npy", ".npz")), "a path to a .npy/.npz file"),
    "program": (is_program_spec, "path/to/file.py:factory"),
    "device": (lambda s: s.startswith("cuda:") and s[5:].isdigit(), "cuda:N"),
}


class Section:
    """A config section whose attributes are its options and nothing else: ``config.model.latent_dimz = 3``
    (a typo that would otherwise be set and ignored) raises ``AttributeError`` naming the option meant.

    A subclass is a dataclass whose fields are made by :func:`option`; ``where`` is its name in
    messages (``train``, ``evaluate``): ``--epochs (train.epochs) must lie in ...``.
    """

    where: ClassVar[str] = ""

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in self.__dataclass_fields__:
            raise AttributeError(
                f"{type(self).__name__} has no option {name!r}{did_you_mean(name, self.__dataclass_fields__)}"
            )
        object.__setattr__(self, name, value)

    def validate(self) -> Self:
        """Check every field against its :class:`Option`, coercing it in place. Returns self."""
        check_fields(self.where, self)
        return self


def options_of(cls: type) -> Iterator[tuple[str, type, Option]]:
    """``(field name, type, Option)`` for every option of a config dataclass."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        yield f.name, hints[f.name], f.metadata["option"]


def did_you_mean(text: str, candidates: Iterable[str]) -> str:
    """`` (did you mean X?)`` for the closest of ``candidates`` to a misspelt ``text``, else ``""``."""
    import difflib

    close = difflib.get_close_matches(str(text)[:200], list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def flag_of(name: str, opt: Option) -> str:
    """The command-line flag of the field ``name``."""
    return opt.flag or "--" + name.replace("_", "-")


_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def parse_text(kind: type, text: str) -> Any:
    """A value of type ``kind`` from command-line text; ``ValueError`` if it is not one."""
    if kind is str:
        return text
    if kind is bool:
        if text.strip().lower() in _TRUE + _FALSE:
            return text.strip().lower() in _TRUE
        raise ValueError(text)
    if kind is int:
        return int(text.strip())
    return float(text)


def coerce(where: str, kind: type, value: Any, opt: Option | None = None) -> Any:
    """The one coercion of a config value: command-line text is parsed, anything else must have the field's type.

    A ``count`` field (a number or ``all``, stored as text) also takes a non-negative integer;
    a ``switch`` field takes ``true``/``false`` (a TOML file's words) as ``on``/``off``.
    """
    if opt is not None and opt.switch and isinstance(value, bool):
        return "on" if value else "off"
    if opt is not None and opt.also == "count" and isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise UserError(f"{where} must be a count N >= 0 or 'all', got {value}")
        return str(value)
    if isinstance(value, str) and kind is not str:
        try:
            return parse_text(kind, value)
        except ValueError:
            raise UserError(f"{where} must be of type {kind.__name__}, got {value!r}") from None
    if kind is bool and isinstance(value, bool):
        return value
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind is str and isinstance(value, str):
        return value
    raise UserError(f"{where} must be of type {kind.__name__}, got {value!r}")


def check_fields(section: str, values: Any) -> None:
    """Coerce every option of the section ``values`` in place and check its type, range and registry name."""
    for name, kind, opt in options_of(type(values)):
        where = f"{flag_of(name, opt)} ({section}.{name})"  # the flag a user typed, the key a TOML file holds
        value = coerce(where, kind, getattr(values, name), opt)
        if kind in (int, float) and not math.isfinite(value):
            raise UserError(f"{where} must be a finite number, got {value}")
        _check_range(where, value, opt)
        if opt.names is not None and value not in opt.names():
            accepted, description = _ALSO.get(opt.also, (lambda s: False, ""))
            if not accepted(value):
                choices = ", ".join(opt.names()) + (f", or {description}" if description else "")
                raise UserError(
                    f"unknown {opt.noun or name.replace('_', ' ')} {value!r}{did_you_mean(value, opt.names())}; "
                    f"choose one of {choices}"
                )
        elif opt.also == "program" and value and opt.names is None and not is_program_spec(value):
            raise UserError(f"{where} must look like path/to/file.py:factory, got {value!r}")
        elif opt.also == "count" and not (value == "all" or (value.isascii() and value.isdigit())):
            raise UserError(f"{where} must be a count N >= 0 or 'all', got {value!r}")
        setattr(values, name, value)


def _check_range(where: str, value: Any, opt: Option) -> None:
    low_ok = opt.low is None or (value > opt.low if opt.open_low else value >= opt.low)
    high_ok = opt.high is None or (value < opt.high if opt.open_high else value <= opt.high)
    if not (low_ok and high_ok):
        left, right = "(" if opt.open_low else "[", ")" if opt.open_high else "]"
        low = "-inf" if opt.low is None else f"{opt.low:g}"
        high = "inf" if opt.high is None else f"{opt.high:g}"
        raise UserError(f"{where} must lie in {left}{low}, {high}{right}, got {value}")
