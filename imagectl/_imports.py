"""Keep securesystemslib from importing boto3 for a signer imagectl never uses.

``securesystemslib.signer`` imports its AWS KMS signer eagerly, and that module imports boto3 whenever boto3 is
installed (it is: imagectl's S3 stores use it): ~180 ms of every command that touches TUF metadata, a pull from
an HTTP catalogue included, which never needs boto3 (securesystemslib issue #1198, lazy imports still open).

:func:`install` adds a meta-path finder that, for ``securesystemslib.signer._aws_signer`` only, runs the module
with ``boto3`` hidden (``sys.modules["boto3"] = None`` makes its ``import boto3`` raise ImportError, which it
handles: ``AWSSigner`` then refuses to be used, with securesystemslib's own message). Nothing else changes: boto3
imports normally everywhere else, before or after.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from types import ModuleType
from typing import Any

__all__ = ["install"]

_TARGET = "securesystemslib.signer._aws_signer"
_HIDDEN = ("boto3", "botocore.exceptions")


class _Loader(importlib.abc.Loader):
    def __init__(self, real: importlib.abc.Loader) -> None:
        self.real = real

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.real.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        hidden = [name for name in _HIDDEN if name not in sys.modules]  # already imported: nothing to save
        for name in hidden:
            sys.modules[name] = None  # type: ignore[assignment]
        try:
            self.real.exec_module(module)
        finally:
            for name in hidden:
                if sys.modules.get(name, 0) is None:
                    del sys.modules[name]


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Any, target: ModuleType | None = None) -> Any:
        if fullname != _TARGET:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _Loader(spec.loader)
                return spec
        return None


def install() -> None:
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
