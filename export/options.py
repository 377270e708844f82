"""``--set KEY=VALUE`` model options, parsed against the model builder's own signature.

Every value is checked before anything is built: integers (``input_size``, ``num_frames``, ``pool_window``, ...)
must be positive, floats finite, sequences of positive integers; an unknown key names the model's options. A bad
value raises `OptionError` with one line naming the option and what it takes (the CLI exits 2 with it).
"""

from __future__ import annotations

import ast
import inspect
import math
from collections.abc import Sequence
from typing import Any

from stexport.errors import StexportError

#: options that are ``int | None`` where None keeps the model's behaviour (``pool_window=none``: cumulative pools)
_NONE_WORDS = ("none", "None")


class OptionError(StexportError, ValueError):
    """A bad ``--set`` value or key; the message names the option and its valid values."""


def _shown(text: str) -> str:
    """``text`` as typed, or its repr when it holds line breaks or other unprintable characters (one line)."""
    return text if text.isprintable() else repr(text)


def model_options(model: str) -> dict[str, inspect.Parameter]:
    """The keyword-only options of registered model ``model``'s builder, by name (``num_classes`` included)."""
    from stexport.models import get_entry

    params = inspect.signature(get_entry(model).build).parameters
    return {k: p for k, p in params.items() if p.kind is p.KEYWORD_ONLY}


def _kind(p: inspect.Parameter) -> str:
    ann = p.annotation if isinstance(p.annotation, str) else getattr(p.annotation, "__name__", str(p.annotation))
    ann = ann.replace(" ", "")
    if ann.startswith("Sequence[int]"):
        return "ints"
    for kind in ("int", "float", "str", "bool"):
        if ann == kind or ann == f"{kind}|None":
            return kind
    return "other"


def _describe(kind: str, optional: bool) -> str:
    what = {"int": "a positive integer", "float": "a finite number", "str": "a word", "bool": "true or false",
            "ints": "positive integers separated by commas (e.g. 1,2,2,2)"}.get(kind, "nothing settable here")
    return what + (" or none" if optional else "")


def parse_value(model: str, key: str, raw: str, param: inspect.Parameter) -> Any:
    """``raw`` as the type ``param`` takes; `OptionError` naming ``key`` and its valid values otherwise."""
    kind = _kind(param)
    optional = isinstance(param.annotation, str) and param.annotation.replace(" ", "").endswith("|None")
    bad = OptionError(f"--set {_shown(f'{key}={raw}')}: option {key!r} of {model} takes {_describe(kind, optional)}")
    text = raw.strip()
    if optional and text in _NONE_WORDS:
        return None
    try:
        if kind == "int":
            value: Any = int(text, 10)
            if value <= 0:
                raise bad
            return value
        if kind == "float":
            value = float(text)
            if not math.isfinite(value):
                raise bad
            return value
        if kind == "bool":
            if text.lower() not in ("true", "false", "1", "0"):
                raise bad
            return text.lower() in ("true", "1")
        if kind == "str":
            if not text or not text.replace("_", "").isalnum():
                raise bad
            return text
        if kind == "ints":
            parts = ast.literal_eval(text) if text[:1] in "([" else text.split(",")
            values = tuple(int(str(v).strip(), 10) for v in parts)
            if not values or min(values) <= 0:
                raise bad
            return values
    except (ValueError, SyntaxError, TypeError):
        raise bad from None
    raise bad


def parse_options(model: str, pairs: Sequence[str]) -> dict[str, Any]:
    """``["input_size=224", "pool_window=300"]`` -> ``{"input_size": 224, "pool_window": 300}``, checked against
    model ``model``'s options (see the module docstring)."""
    known = model_options(model)
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise OptionError(f"--set {_shown(pair)}: expected KEY=VALUE, e.g. --set input_size=224")
        if key not in known:
            raise OptionError(f"--set {_shown(pair)}: model {model!r} has no option {key!r}; its options: "
                              f"{', '.join(known)}")
        out[key] = parse_value(model, key, raw, known[key])
    return out
