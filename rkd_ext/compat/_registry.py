"""Registration with a framework's registry, only when that framework is installed."""
import importlib


def import_if_installed(module, package):
    """``module`` imported, or None when ``package`` itself is not installed.

    A framework that is installed but fails to import (a missing dependency of
    its own, a version mismatch) raises as usual: hiding that would leave a
    config that names our losses failing later with a less useful message.
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (exc.name == package or exc.name.startswith(package + ".")):
            return None
        raise
