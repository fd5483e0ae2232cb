"""MLCommons' pandas pickles (OpenOrca for Llama 2 70B), read without running code.

A pickle names the functions that rebuild its objects, so loading one can call anything. A
DataFrame of strings, token lists and integers needs only a few of pandas' and numpy's
constructors; the unpickler here resolves those and refuses every other name, in one line that
names it. Names pandas has moved between releases (a pickle written by pandas 1.x) are mapped to
where they live now first, with pandas' own table.
"""

from __future__ import annotations

import _compat_pickle
import gzip
import pickle
from pathlib import Path

from .errors import InputError

# What a DataFrame of object, string, integer and float columns needs, as pandas 1.x to 3.x and numpy 1.x / 2.x
# write it (protocols 2 to 5; pandas 3 stores strings in Arrow arrays).
ALLOWED = frozenset(
    {
        ("builtins", "slice"),
        ("builtins", "bytearray"),
        ("_codecs", "encode"),  # protocol 2 writes bytes through encode
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("pandas", "DataFrame"),
        ("pandas.core.frame", "DataFrame"),
        ("pandas", "Series"),
        ("pandas.core.series", "Series"),
        ("pandas", "Index"),
        ("pandas", "RangeIndex"),
        ("pandas", "NA"),
        ("pandas", "StringDtype"),
        ("pandas.core.internals.managers", "BlockManager"),
        ("pandas.core.internals.managers", "SingleBlockManager"),
        ("pandas._libs.internals", "_unpickle_block"),
        ("pandas._libs.arrays", "__pyx_unpickle_NDArrayBacked"),
        ("pandas.core.indexes.base", "_new_Index"),
        ("pandas.core.indexes.base", "Index"),
        ("pandas.core.indexes.range", "RangeIndex"),
        ("pandas.arrays", "ArrowStringArray"),
        ("pandas.arrays", "StringArray"),
        ("pandas.core.arrays.string_", "StringDtype"),
        ("pandas.core.arrays.string_", "StringArray"),
        ("pandas.core.arrays.string_arrow", "ArrowStringArray"),
        ("pyarrow.lib", "_restore_array"),
        ("pyarrow.lib", "type_for_alias"),
        ("pyarrow.lib", "py_buffer"),
    }
)


def _moved() -> dict:
    try:
        from pandas.compat.pickle_compat import _class_locations_map
    except ImportError:  # a pandas without the table: names are taken as written
        return {}
    return dict(_class_locations_map)


class _Restricted(pickle.Unpickler):
    def __init__(self, file, where: Path):
        super().__init__(file)
        self.where, self.moved = where, _moved()

    def find_class(self, module: str, name: str):
        # Python 2 names (protocol 2 writes __builtin__), mapped as pickle itself maps them
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        module, name = self.moved.get((module, name), (module, name))
        if (module, name) not in ALLOWED:
            raise InputError(
                f"{self.where}: refused to unpickle {module}.{name}: only the pandas and numpy classes a "
                "DataFrame needs are loaded (a pickle can run code)"
            )
        return super().find_class(module, name)


def is_pickle(path: Path) -> bool:
    """A pickle (protocol 2 and later open with 0x80) or a gzipped file, by its first bytes, whatever its name."""
    with open(path, "rb") as fh:
        head = fh.read(2)
    return head[:1] == b"\x80" or head == b"\x1f\x8b"


def read_dataframe(path: Path):
    """The DataFrame a (possibly gzipped) pandas pickle holds; anything else is an InputError naming the file."""
    import pandas as pd

    path = Path(path)
    with open(path, "rb") as raw:
        gz = raw.read(2) == b"\x1f\x8b"
    try:
        with gzip.open(path, "rb") if gz else open(path, "rb") as fh:
            frame = _Restricted(fh, path).load()
    except InputError:
        raise
    except (pickle.UnpicklingError, EOFError, OSError, ValueError, TypeError, AttributeError, ImportError) as err:
        raise InputError(f"{path}: not a readable pandas pickle ({type(err).__name__}: {str(err)[:160]})") from None
    if not isinstance(frame, pd.DataFrame):
        raise InputError(f"{path}: holds a {type(frame).__name__}, not a pandas DataFrame")
    return frame
