"""Where a stage's records come from: a JSONL file, or a dataset read with ``datasets``.

``data.files.<key>`` is a path, or ``{path, split, subset, columns}``:

- a ``.jsonl`` path (no split or subset): read line by line here, errors name ``file:line``;
- a local parquet / arrow / json / csv file (or .gz, .bz2, .xz, .zst of one):
  ``load_dataset(<format>, data_files=path, split=split)``;
- a directory written by ``save_to_disk``: ``load_from_disk`` (then its ``split``);
- any other directory, or a hub id: ``load_dataset(path, name=subset, split=split)``.

``split`` defaults to ``train``. ``columns`` (merged over ``data.columns``) renames dataset
columns to record keys, ``{prompt: question}``. Errors in a dataset name it, the split and the row.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

SUFFIXES = {".parquet": "parquet", ".arrow": "arrow", ".json": "json", ".jsonl": "json", ".csv": "csv"}
COMPRESSED = (".gz", ".bz2", ".xz", ".zst")
SPEC_KEYS = ("path", "split", "subset", "columns")


class DataError(ValueError):
    """A data file or dataset that breaks its schema; the message names the file and line (or row)."""


@dataclass(frozen=True)
class Source:
    path: str
    split: str | None = None
    subset: str | None = None
    columns: tuple[tuple[str, str], ...] = ()  # (record key, column): the column is read as the key
    drop_invalid: bool = False  # data.drop_invalid: skip (log, count) records that break the schema

    @classmethod
    def of(cls, spec: Any, columns: Mapping[str, str] | None = None, key: str = "",
           drop_invalid: bool = False) -> "Source":
        """A Source from ``data.files.<key>``'s value (a path or a mapping), ``data.columns`` and
        ``data.drop_invalid``."""
        if isinstance(spec, Source):
            return spec
        if not isinstance(spec, Mapping):
            return cls(str(spec), columns=tuple((columns or {}).items()), drop_invalid=drop_invalid)
        where = f"data.files.{key}" if key else "a data spec"
        if unknown := sorted(set(spec) - set(SPEC_KEYS)):
            raise DataError(f"{where}: unknown key(s) {unknown}; a dataset spec has {list(SPEC_KEYS)}")
        if not spec.get("path"):
            raise DataError(f"{where}: 'path' is missing (a hub id, or a local file or directory)")
        merged = {**(columns or {}), **(spec.get("columns") or {})}
        return cls(str(spec["path"]), spec.get("split"), spec.get("subset"), tuple(merged.items()), drop_invalid)

    @property
    def is_jsonl(self) -> bool:
        return self.split is None and self.subset is None and self.path.endswith(".jsonl")

    @property
    def unit(self) -> str:
        return "line" if self.is_jsonl else "row"

    def __str__(self) -> str:
        if self.is_jsonl:
            return self.path
        return f"dataset {self.path} (split {self.split or 'train'}{f', subset {self.subset}' if self.subset else ''})"

    def at(self, n: int) -> str:
        """Where record n is: ``file:line`` or ``dataset ... row n``."""
        return f"{self.path}:{n}" if self.is_jsonl else f"{self} row {n}"

    def rename(self, rec: dict) -> dict:
        for key, column in self.columns:
            if column in rec and key != column:
                rec[key] = rec.pop(column)
        return rec


def _looks_local(path: str) -> bool:
    return path.startswith(("/", "./", "../", "~")) or Path(path).suffix in (*SUFFIXES, *COMPRESSED)


def load(src: Source):
    """The ``datasets.Dataset`` of ``src`` (module docstring); errors name the dataset."""
    import datasets  # imported lazily: JSONL runs never need it

    path, split = Path(src.path).expanduser(), src.split or "train"
    try:
        if path.is_file():
            if src.subset:
                raise DataError(f"{src}: 'subset' applies to hub datasets and dataset directories, not to a file")
            kind = Path(path.stem).suffix if path.suffix in COMPRESSED else path.suffix  # x.jsonl.gz: json
            if kind not in SUFFIXES:
                raise DataError(f"{src}: unknown file type {path.suffix!r}; expected one of {sorted(SUFFIXES)}, "
                                f"optionally compressed ({', '.join(COMPRESSED)})")
            return datasets.load_dataset(SUFFIXES[kind], data_files=str(path), split=split)
        if path.is_dir() and any((path / f).is_file() for f in ("dataset_info.json", "dataset_dict.json")):
            ds = datasets.load_from_disk(str(path))
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise DataError(f"{src}: no split {split!r}; it has {list(ds)}")
                ds = ds[split]
            return ds
        if not path.is_dir() and _looks_local(src.path):
            raise DataError(f"{src}: no such file or directory")
        return datasets.load_dataset(str(path) if path.is_dir() else src.path, name=src.subset, split=split)
    except DataError:
        raise
    except Exception as e:  # hub, format or split errors: name what was asked for
        raise DataError(f"{src} could not be loaded: {type(e).__name__}: {e}") from None


def rows(src: Source) -> Iterator[tuple[int, dict]]:
    """(row, record) of a dataset; null columns are dropped (arrow's nulls for absent keys)."""
    ds = load(src)
    for i, row in enumerate(ds):
        yield i, src.rename({k: v for k, v in row.items() if v is not None})
