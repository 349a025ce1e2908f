"""Reading a user's data into raw rows: files (.jsonl, .jsonl.gz, .json, .parquet), a
directory's split files, a Hugging Face hub dataset, or a list already in memory.

Each reader yields ``(source, row number, row)``, where a row that cannot be read at all
(bad JSON, not an object) is a ``BadRow`` saying why; ``datasets.load_examples`` decides
whether that stops the load or is skipped. Layouts (``layouts.py``) know nothing of files.
"""

from __future__ import annotations

import glob
import gzip
import json
import os
import zlib
from typing import Any, Iterator, Mapping

FILE_EXTENSIONS = (".jsonl", ".jsonl.gz", ".json", ".parquet")


class BadRow(ValueError):
    """A row breaks a layout rule; the loader adds where it is."""


# (source, row number, the row or the reason it could not be read)
RawRow = tuple[str, int, "dict | BadRow"]


def _open_binary(path: str):
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def _lines(path: str) -> Iterator[bytes]:
    """The file's lines; a truncated or corrupt .gz is a ValueError naming the file and line."""
    number = 0
    try:
        with _open_binary(path) as f:
            for number, raw in enumerate(f, start=1):
                yield raw
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:
        raise ValueError(
            f"`data` file {path} is truncated or not valid gzip after line {number} ({type(err).__name__}: {err}). "
            "Download or compress it again."
        ) from None


def _read_jsonl(path: str) -> Iterator[RawRow]:
    for number, raw in enumerate(_lines(path), start=1):
        if not raw.strip():
            continue  # a blank line holds no row (row numbers stay line numbers)
        try:
            row = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as err:
            yield path, number, BadRow(f"line is not valid UTF-8 (byte {err.start + 1})")
            continue
        except json.JSONDecodeError as err:
            yield path, number, BadRow(f"line is not valid JSON ({err.msg} at column {err.colno})")
            continue
        except ValueError as err:  # e.g. an integer over Python's 4300-digit limit
            yield path, number, BadRow(f"line cannot be read ({str(err)[:120]})")
            continue
        if not isinstance(row, dict):
            yield path, number, BadRow(f"line is a JSON {type(row).__name__}, not an object")
            continue
        yield path, number, row


def _read_json(path: str) -> Iterator[RawRow]:
    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except ValueError as err:  # bad JSON, bad UTF-8, or an integer over Python's digit limit
            raise ValueError(
                f"`data` file {path} is not valid JSON ({err}). Fix the file; for one JSON object "
                "per line name it .jsonl (then each bad line is reported on its own)."
            ) from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise ValueError(
            f"`data` file {path} holds a JSON {type(data).__name__}; a .json file must hold a "
            "list of objects or {\"data\": [...]}. Reshape it, or write one object per line as .jsonl."
        )
    for number, row in enumerate(data, start=1):
        if isinstance(row, dict):
            yield path, number, row
        else:
            yield path, number, BadRow(f"item is a JSON {type(row).__name__}, not an object")


def _read_parquet(path: str) -> Iterator[RawRow]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises several types for unreadable files
        raise ValueError(
            f"`data` file {path} could not be read as parquet ({type(err).__name__}: {err}). "
            "Check that it is a complete .parquet file."
        ) from None
    for number, row in enumerate(table.to_pylist(), start=1):
        yield path, number, row


def _read_file(path: str) -> Iterator[RawRow]:
    if path.endswith((".jsonl", ".jsonl.gz")):
        return _read_jsonl(path)
    if path.endswith(".json"):
        return _read_json(path)
    if path.endswith(".parquet"):
        return _read_parquet(path)
    raise ValueError(
        f"`data` file {path} has an unsupported extension; supported: {', '.join(FILE_EXTENSIONS)}. "
        "Convert it, or pass a directory holding {split}.jsonl / {split}.parquet."
    )


def split_files(directory: str, split: str) -> list[str]:
    """``{split}.<ext>`` or shards ``{split}-*.<ext>`` in ``directory`` or ``directory/data``."""
    for folder in (directory, os.path.join(directory, "data")):
        for ext in FILE_EXTENSIONS:
            exact = os.path.join(folder, split + ext)
            if os.path.isfile(exact):
                return [exact]
            shards = sorted(glob.glob(os.path.join(glob.escape(folder), glob.escape(split) + "-*" + ext)))
            if shards:
                return shards
    present = sorted(
        name for name in os.listdir(directory) if name.endswith(FILE_EXTENSIONS)
    )
    raise ValueError(
        f"`data` directory {directory} has no file for split {split!r}: expected {split}.jsonl, "
        f"{split}.parquet (or shards {split}-*.parquet), there or under data/. Data files there: "
        f"{', '.join(present) or 'none'}. Pass `split=` matching one of them or the file's path."
    )


def _read_hub(name: str, split: str) -> Iterator[RawRow]:
    try:
        import datasets  # optional: only hub names need it
    except ImportError:
        raise ImportError(
            f"`data` ({'hf:' + name!r}) names a Hugging Face dataset, which needs the `datasets` "
            "package: `pip install datasets`. Or download the data and pass a local .jsonl/.parquet path."
        ) from None
    repo, _, config = name.partition(":")
    try:
        ds = datasets.load_dataset(repo, config or None, split=split)
    except Exception as err:  # hub errors have many types (connection, auth, missing split)
        raise RuntimeError(
            f"`data` ({'hf:' + name!r}): could not load split {split!r} from the Hugging Face Hub "
            f"({type(err).__name__}: {str(err)[:300]}). Check the name, config and split, your network "
            "(HF_HUB_OFFLINE) and login, or download the data and pass a local path."
        ) from err
    source = f"hf:{name}/{split}"
    for number, row in enumerate(ds, start=1):
        yield source, number, dict(row)


def raw_rows(data: Any, split: str) -> tuple[list[str], Iterator[RawRow]]:
    if isinstance(data, (list, tuple)):
        def items() -> Iterator[RawRow]:
            for number, row in enumerate(data, start=1):
                if isinstance(row, Mapping):
                    yield "<list>", number, dict(row)
                else:
                    yield "<list>", number, BadRow(f"item is a {type(row).__name__}, not a dict")
        return ["<list>"], items()
    if not isinstance(data, (str, os.PathLike)):
        raise TypeError(
            f"`data` must be a path, 'hf:org/name' or a list of dicts, got {type(data).__name__}."
        )
    data = os.fspath(data)
    if data.startswith("hf:"):
        return [data], _read_hub(data[3:], split)
    path = os.path.expanduser(data)
    if os.path.isdir(path):
        files = split_files(path, split)
    elif os.path.isfile(path):
        files = [path]
    else:
        raise FileNotFoundError(
            f"`data` ({data!r}) is not an existing file or directory. Pass the path of a "
            f"{'/'.join(FILE_EXTENSIONS)} file, a directory with {{split}}.jsonl, or 'hf:org/name'."
        )

    def chained() -> Iterator[RawRow]:
        for file in files:
            yield from _read_file(file)

    return files, chained()
