"""The few exception classes tightfit raises.

Every error a user can cause says what is wrong and how to fix it; callers (CLI, components, Ray
entrypoints) catch `TightfitError` and print its message instead of a traceback.
"""

from __future__ import annotations


class TightfitError(Exception):
    """Base class: a problem the user can act on; the message names the problem and the fix."""


class ConfigError(TightfitError, ValueError):
    """A spec, target, config file or argument is invalid."""


class AssetMissingError(TightfitError, FileNotFoundError):
    """A model or dataset package/file is not installed or not readable."""


class VariantError(TightfitError):
    """A variant directory is missing, corrupt, truncated or fails its checksum."""


class UnsupportedError(TightfitError):
    """A method cannot run on this device or model kind (e.g. int4 on CPU)."""


class BudgetError(TightfitError):
    """A hardware budget cannot be met (e.g. memory too small for batch 1)."""


class BackendError(TightfitError):
    """An external service (Ray cluster, MLflow server, KFP API, Kubernetes API) is unreachable or refused."""


def describe_validation_error(exc: Exception, *, unknown_key_hint: str = "check the spelling") -> str:
    """One line from a pydantic ``ValidationError``: ``field.path: what is wrong`` for each problem."""
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return str(exc)
    lines = []
    for err in errors():
        loc = ".".join(str(p) for p in err.get("loc", ()))
        msg = str(err.get("msg", "")).removeprefix("Value error, ")
        if err.get("type") == "extra_forbidden":
            msg = f"unknown key ({unknown_key_hint})"
        lines.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(lines) or str(exc)
