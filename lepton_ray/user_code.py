"""Your own models and data sets, named by import path (`module:attribute`) wherever a registry name goes.

`student.name: "my_models:tiny_cnn"` imports `my_models` and calls its `tiny_cnn` with the registry's
contract (`models/zoo.py`, `data/datasets.py`). The module is either installed, or listed under the
workflow's `user_code:` (a `.py` file or a package folder): the driver imports it from there, and
`init_ray` ships the same files to every Ray worker as `runtime_env["py_modules"]`, so trials on any
node import it by name. `lepton-ray submit` stages the files into the job's working_dir.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

from lepton_ray.errors import ConfigError

SEPARATOR = ":"
LISTED_MODULES: set[str] = set()
"""Names of the `user_code` modules imported in this process: what a mistyped module name is matched against."""


def is_import_path(name: str) -> bool:
    return SEPARATOR in name


def module_name(path: Path) -> str:
    """The name a `user_code` entry is imported by: a file's stem, a package folder's name."""
    path = Path(path)
    return path.stem if path.suffix == ".py" else path.name


def load_user_code(paths: list[Path], on_worker: bool = False, field: str = "user_code") -> None:
    """Import every `user_code` entry by its name. `on_worker`: a Ray worker, where the files may not
    exist at these paths, and Ray's py_modules made the modules importable by name, which is enough."""
    for index, path in enumerate(paths):
        entry = f"{field}.{index}"
        path = Path(path)
        name = module_name(path)
        if not path.exists():
            if on_worker and importlib.util.find_spec(name) is not None:
                continue  # shipped to this worker by Ray (py_modules)
            raise ConfigError(f"{entry}: {str(path)!r} not found; list a .py file or a package folder holding your models or data")
        _import_from(path, name, entry)
        LISTED_MODULES.add(name)


def _import_from(path: Path, name: str, entry: str) -> None:
    if path.is_file() and path.suffix != ".py":
        raise ConfigError(f"{entry}: {str(path)!r} is not a .py file; list a Python file or a package folder")
    init = path if path.is_file() else path / "__init__.py"
    if not init.is_file():
        raise ConfigError(f"{entry}: folder {str(path)!r} has no __init__.py; list a package folder or the .py files themselves")
    loaded = sys.modules.get(name)
    if loaded is not None:
        origin = getattr(loaded, "__file__", None)
        if origin is not None and Path(origin).resolve() == init.resolve():
            return
        raise ConfigError(f"{entry}: module name {name!r} is taken by {origin or 'a built-in module'}; rename {path.name}")
    spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(path)] if path.is_dir() else None)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as err:  # the user's module: any error it raises is reported, in one line
        del sys.modules[name]
        raise ConfigError(f"{entry}: importing {str(path)!r} raised {_one_line(err)}; fix that file") from None


def import_object(target: str, field: str) -> Any:
    """`module:attribute` (the attribute may be dotted) imported; a one-line `ConfigError` naming `field` otherwise."""
    module_path, _, attribute = target.partition(SEPARATOR)
    if not module_path or not attribute:
        raise ConfigError(f"{field}: {target!r} is not an import path; write module:attribute, e.g. my_models:tiny_cnn")
    try:
        module = importlib.import_module(module_path)
    except ModuleNotFoundError as err:
        if err.name and module_path.startswith(err.name):
            close = difflib.get_close_matches(module_path, sorted(LISTED_MODULES), n=1)
            if close:
                raise ConfigError(f"{field}: no module {module_path!r}; did you mean {close[0]!r} (listed under user_code)? fix the name") from None
            raise ConfigError(f"{field}: no module {module_path!r}; list its file under user_code: or install it") from None
        raise ConfigError(f"{field}: importing {module_path!r} raised {_one_line(err)}; fix that module") from None
    except Exception as err:  # the user's module: report whatever it raised
        raise ConfigError(f"{field}: importing {module_path!r} raised {_one_line(err)}; fix that module") from None
    value: Any = module
    for part in attribute.split("."):
        if not hasattr(value, part):
            public = sorted(n for n in dir(module) if not n.startswith("_"))[:8]
            raise ConfigError(f"{field}: module {module_path!r} has no {attribute!r} (it defines: {', '.join(public) or 'nothing'}); fix the name")
        value = getattr(value, part)
    if not callable(value):
        raise ConfigError(f"{field}: {target} is a {type(value).__name__}, not a function or class; name the factory")
    return value


def py_modules(paths: list[Path]) -> list[str]:
    """`user_code` as Ray's `runtime_env["py_modules"]`: absolute paths of the files and folders that exist here."""
    return [str(Path(path).resolve()) for path in paths if Path(path).exists()]


def first_line(err: BaseException) -> str:
    """An exception's message cut to one line (its type name when it has none): errors stay one line."""
    lines = str(err).strip().splitlines()
    return lines[0][:200] if lines else type(err).__name__


def _one_line(err: BaseException) -> str:
    return f"{type(err).__name__}: {first_line(err)}" if str(err).strip() else type(err).__name__
