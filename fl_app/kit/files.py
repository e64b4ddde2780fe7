"""Files written whole or not at all: no reader, nor a run killed mid-write, sees half of one."""

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


@contextmanager
def atomic_file(path: Path, mode: str = "w") -> Iterator[IO[Any]]:
    """A temporary file beside ``path`` that replaces ``path`` only once fully written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.NamedTemporaryFile(mode, dir=path.parent, suffix=".tmp", delete=False)  # noqa: SIM115
    try:
        with tmp:
            yield tmp
    except BaseException:
        os.unlink(tmp.name)
        raise
    os.chmod(tmp.name, 0o644)  # a temporary file starts private (0600)
    os.replace(tmp.name, path)


def json_default(value: Any) -> Any:  # json.dumps(default=...) for numpy scalars
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
