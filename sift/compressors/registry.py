"""Name -> compressor class, so configs and the CLI can say `method: omnizip`."""

from __future__ import annotations

from typing import Any, Callable, TypeVar

__all__ = ["register", "unregister", "get_compressor", "available_compressors"]

_REGISTRY: dict[str, type] = {}
T = TypeVar("T", bound=type)


def register(name: str) -> Callable[[T], T]:
    """Class decorator adding a compressor under `name`."""

    def wrap(cls: T) -> T:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"a compressor named {name!r} is already registered ({_REGISTRY[name].__name__})")
        _REGISTRY[name] = cls
        return cls

    return wrap


def unregister(name: str) -> None:
    """Remove a compressor added with `register` (a test's or a notebook's), so it leaves no trace behind."""
    if name not in _REGISTRY:
        raise ValueError(f"no compressor named {name!r} is registered")
    del _REGISTRY[name]


def available_compressors() -> list[str]:
    return sorted(_REGISTRY)


def get_compressor(name: str, retention: float | None = None, **kwargs: Any):
    """Build a registered compressor.

    Args:
        name: one of `available_compressors()`.
        retention: fraction of audio+video tokens kept, in (0, 1]. Required by every method except
            `none` (always 1.0) and `omnizip` given `rho_audio`/`rho_video`: a silent default of 1.0
            would keep everything and look like compression.
        **kwargs: method-specific options (e.g. `seed` for `random`).
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown compressor {name!r}; available: {', '.join(available_compressors())}")
    cls = _REGISTRY[name]
    try:
        return cls(retention=retention, **kwargs)
    except TypeError as e:
        message = str(e)
        if message.startswith(f"{name}:") or message.startswith(f"{name} "):
            raise  # the compressor already named itself
        raise TypeError(f"{name}: {message}") from None
