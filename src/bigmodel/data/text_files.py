"""Reading labeled text files, with errors that name the file and line.

Two formats: `LABEL<space>text` lines (SST, TREC) and CSV/TSV with text and label columns. Files are
decoded whole with the configured encoding (a decode error is reported at its line) and split on
"\\n" only: str.splitlines() would also break lines at \\x85, \\u2028 and friends inside the text.

CSV/TSV quoting (one rule for both, the usual CSV one): a field that starts with `"` is quoted and
ends at the next lone `"`, which must be followed by the delimiter or the end of the line; inside
it the delimiter and line breaks are text and `""` is one quote. A `"` anywhere else is text. A
quote left open, a row with more fields than the header, and (in a TSV) a quoted field that holds
both a tab and a line break (the mark of an open quote that swallowed the rows after it) are errors
naming the file and line. Texts longer than MAX_TEXT_CHARS characters are errors, not truncated.
"""

import csv
import io
import re
from collections.abc import Iterator
from pathlib import Path

from bigmodel.data.errors import DataError

Raw = tuple[str, str, str]  # (label as written, text, "file:line")
Example = tuple[int, str]  # (label index, text)
_LABELED = re.compile(r"(\S+)[ \t]+(\S.*)")
MAX_TEXT_CHARS = 131_072  # one example's text (the csv module's own field limit); a longer one is an error
QUOTING = 'a field that starts with " must end with " before the delimiter or line end; write "" for a quote inside it'


def read_bytes(path: Path) -> bytes:
    """The file's bytes; a folder, an unreadable or a vanished file is one DataError naming it."""
    try:
        return path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read it ({e.strerror or type(e).__name__})") from None


def read_text(path: Path, encoding: str, key: str | None = "data.encoding") -> str:
    """The decoded file; a decode error names the line and suggests `key` (None: convert to UTF-8)."""
    data = read_bytes(path)
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        fix = f"set {key} to the file's encoding (e.g. {key}=latin-1)" if key else "save the file as UTF-8"
        raise DataError(
            f"{path}:{line}: cannot decode byte 0x{data[e.start]:02x} (column {column}) as {encoding}; {fix}"
        ) from None
    except LookupError:
        raise DataError(f"{path}: unknown encoding {encoding!r} ({key or 'encoding'})") from None
    return text.removeprefix("\ufeff")  # a UTF-8 byte-order mark is not text


def read_label_lines(path: Path, encoding: str = "utf-8") -> list[Raw]:
    """Examples of a `LABEL text` file; blank lines are skipped, anything else malformed is an error."""
    out = []
    for number, line in enumerate(read_text(path, encoding).split("\n"), 1):
        line = line.rstrip("\r")  # files written on Windows
        if not line.strip():
            continue
        if len(line) > MAX_TEXT_CHARS:
            raise DataError(
                f"{path}:{number}: a line of {len(line):,} characters; a `LABEL text` file holds one "
                f"example a line of at most {MAX_TEXT_CHARS:,} characters (is this the right file?)"
            )
        match = _LABELED.fullmatch(line.strip())
        if match is None:
            raise DataError(f"{path}:{number}: expected `LABEL text`, got {line[:80]!r}")
        out.append((match.group(1), match.group(2), f"{path}:{number}"))
    if not out:
        raise DataError(f"{path}: no examples (the file is empty); fill it or remove it")
    return out


def _column(spec: str | int, names: list[str] | None, path: Path, key: str) -> int:
    if isinstance(spec, int) or (isinstance(spec, str) and spec.isdigit() and (names is None or spec not in names)):
        return int(spec)
    if names is None:
        raise DataError(f"{path}: {key}={spec!r} names a column but data.header=false; give its index (0, 1, ...)")
    if spec not in names:
        raise DataError(f"{path}: no column {spec!r} in the header ({key}); columns are {names}")
    return names.index(spec)


def _records(path: Path, text: str, delimiter: str) -> Iterator[tuple[int, list[str]]]:
    """(first line, fields) of each record; a csv error (an open quote, text after a closing quote,
    a field over the limit) is reported at the line where its record starts."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    start = 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            why = "a quote opened in this row is never closed" if "end of data" in str(e) else str(e)
            raise DataError(f"{path}:{start}: {why} (quoting: {QUOTING})") from None
        if delimiter == "\t" and reader.line_num > start and any("\t" in f and "\n" in f for f in row):
            raise DataError(
                f"{path}:{start}: a quoted field runs to line {reader.line_num} across tabs and line "
                f"breaks: a quote left open swallows the rows after it (quoting: {QUOTING})"
            )
        yield start, row
        start = reader.line_num + 1


def read_csv_rows(
    path: Path,
    encoding: str,
    text_column: str | int,
    label_column: str | int,
    delimiter: str | None = None,
    header: bool = True,
) -> list[Raw]:
    """Examples of a CSV (or, for a .tsv file or delimiter="\\t", TSV) file; see the quoting rule above."""
    if delimiter is None:
        delimiter = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    records = _records(path, read_text(path, encoding), delimiter)
    names = next(records, (0, None))[1] if header else None
    if header and names is None:
        raise DataError(f"{path}: empty file, expected a header row")
    t_idx = _column(text_column, names, path, "data.text_column")
    l_idx = _column(label_column, names, path, "data.label_column")
    width, out = len(names) if names else None, []
    for line, row in records:
        where = f"{path}:{line}"
        if not row or not any(cell.strip() for cell in row):
            continue
        width = width or len(row)  # no header: the first row sets the number of fields
        if len(row) > width:
            raise DataError(
                f"{where}: {len(row)} fields, but the {'header' if header else 'first row'} has {width} "
                f'(delimiter {delimiter!r}); a text holding the delimiter must be quoted ("...")'
            )
        if len(row) <= max(t_idx, l_idx):
            raise DataError(
                f"{where}: {len(row)} columns, expected at least {max(t_idx, l_idx) + 1} (delimiter {delimiter!r})"
            )
        if not row[t_idx].strip():
            raise DataError(f"{where}: empty text")
        if not row[l_idx].strip():
            raise DataError(f"{where}: empty label")
        out.append((row[l_idx].strip(), row[t_idx], where))
    if not out:
        raise DataError(f"{path}: no examples, only {'a header' if header else 'blank lines'}")
    return out


def infer_class_names(labels: list[str]) -> list[str]:
    """Integer labels from 0 are classes 0..max (also those train never shows); other integer labels
    (say 1-5 stars) are their distinct values in numeric order; any other labels, their sorted set."""
    if labels and all(label.isdigit() for label in labels):
        values = sorted({int(label) for label in labels})
        return [str(i) for i in range(values[-1] + 1)] if values[0] == 0 else [str(v) for v in values]
    return sorted(set(labels))


def to_examples(
    splits: dict[str, list[Raw]], class_names: list[str] | None
) -> tuple[dict[str, list[Example]], list[str]]:
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
                raise DataError(
                    f"{where}: label {label!r} is not one of {names} nor an index 0..{len(names) - 1} "
                    "(data.class_names)"
                )
            examples.append((i, text))
        out[split] = examples
    return out, names
