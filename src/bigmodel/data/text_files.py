"""Reading labeled text files, with errors that name the file and line.

Two formats: `LABEL<space>text` lines (SST, TREC) and CSV/TSV with text and label columns. Files are
decoded whole with the configured encoding (a decode error is reported at its line) and split on
"\\n" only: str.splitlines() would also break lines at \\x85, \\u2028 and friends inside the text.
"""

import csv
import io
import re
from pathlib import Path

from bigmodel.data.errors import DataError

Raw = tuple[str, str, str]  # (label as written, text, "file:line")
Example = tuple[int, str]  # (label index, text)
_LABELED = re.compile(r"(\S+)[ \t]+(\S.*)")


def read_text(path: Path, encoding: str) -> str:
    data = path.read_bytes()
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise DataError(f"{path}:{line}: cannot decode byte 0x{data[e.start]:02x} (column {column}) as "
                        f"{encoding}; set data.encoding to the file's encoding (e.g. latin-1)") from None
    except LookupError:
        raise DataError(f"{path}: unknown encoding {encoding!r} (data.encoding)") from None
    return text.removeprefix("\ufeff")  # a UTF-8 byte-order mark is not text


def read_label_lines(path: Path, encoding: str = "utf-8") -> list[Raw]:
    """Examples of a `LABEL text` file; blank lines are skipped, anything else malformed is an error."""
    out = []
    for number, line in enumerate(read_text(path, encoding).split("\n"), 1):
        line = line.rstrip("\r")  # files written on Windows
        if not line.strip():
            continue
        match = _LABELED.fullmatch(line.strip())
        if match is None:
            raise DataError(f"{path}:{number}: expected `LABEL text`, got {line[:80]!r}")
        out.append((match.group(1), match.group(2), f"{path}:{number}"))
    return out


def _column(spec: str | int, names: list[str] | None, path: Path, key: str) -> int:
    if isinstance(spec, int) or (isinstance(spec, str) and spec.isdigit() and (names is None or spec not in names)):
        return int(spec)
    if names is None:
        raise DataError(f"{path}: {key}={spec!r} names a column but data.header=false; give its index (0, 1, ...)")
    if spec not in names:
        raise DataError(f"{path}: no column {spec!r} in the header ({key}); columns are {names}")
    return names.index(spec)


def read_csv_rows(path: Path, encoding: str, text_column: str | int, label_column: str | int,
                  delimiter: str | None = None, header: bool = True) -> list[Raw]:
    """Examples of a CSV (or, for a .tsv file or delimiter="\\t", TSV) file; quoted fields may span lines."""
    if delimiter is None:
        delimiter = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    reader = csv.reader(io.StringIO(read_text(path, encoding), newline=""), delimiter=delimiter)
    try:
        names = next(reader) if header else None
        t_idx = _column(text_column, names, path, "data.text_column")
        l_idx = _column(label_column, names, path, "data.label_column")
        out = []
        for row in reader:
            where = f"{path}:{reader.line_num}"
            if not row or not any(cell.strip() for cell in row):
                continue
            if len(row) <= max(t_idx, l_idx):
                raise DataError(f"{where}: {len(row)} columns, expected at least {max(t_idx, l_idx) + 1} "
                                f"(delimiter {delimiter!r})")
            if not row[t_idx].strip():
                raise DataError(f"{where}: empty text")
            out.append((row[l_idx].strip(), row[t_idx], where))
    except csv.Error as e:
        raise DataError(f"{path}:{reader.line_num}: {e}") from None
    except StopIteration:
        raise DataError(f"{path}: empty file, expected a header row") from None
    return out


def infer_class_names(labels: list[str]) -> list[str]:
    """Integer labels from 0 are classes 0..max (also those train never shows); other integer labels
    (say 1-5 stars) are their distinct values in numeric order; any other labels, their sorted set."""
    if labels and all(label.isdigit() for label in labels):
        values = sorted({int(label) for label in labels})
        return [str(i) for i in range(values[-1] + 1)] if values[0] == 0 else [str(v) for v in values]
    return sorted(set(labels))


def to_examples(splits: dict[str, list[Raw]], class_names: list[str] | None) -> tuple[dict[str, list[Example]], list[str]]:
    """(label index, text) per split. A label is a class name, or an index into class_names."""
    if not splits.get("train"):
        raise DataError("the train split has no examples")
    names = list(class_names) if class_names else infer_class_names([label for label, _, _ in splits["train"]])
    index = {name: i for i, name in enumerate(names)}
    out: dict[str, list[Example]] = {}
    for split, raws in splits.items():
        examples = []
        for label, text, where in raws:
            i = index.get(label)
            if i is None and class_names and label.isdigit() and int(label) < len(names):
                i = int(label)
            if i is None:
                raise DataError(f"{where}: label {label!r} is not one of {names} nor an index 0..{len(names) - 1} "
                                "(data.class_names)")
            examples.append((i, text))
        out[split] = examples
    return out, names
