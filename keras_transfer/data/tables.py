"""Tables as a source: a CSV file or a pandas DataFrame of image paths and labels (`Table` holds its options)."""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import math
import os
import re

import numpy as np

from keras_transfer.data.duplicates import one_per_image
from keras_transfer.data.pipeline import decode_files
from keras_transfer.data.records import Records, warn_similar_names
from keras_transfer.images import image_problem

logger = logging.getLogger(__name__)


# Tables: the path column looked for when none is named (the first present), the split column's values, and the
# options that only a table source takes (`load_dataset`'s table arguments, in order).
PATH_COLUMNS = ("path", "filename", "file", "image")


SPLIT_VALUES = {
    "train": "train",
    "validation": "validation",
    "val": "validation",
    "valid": "validation",
    "test": "test",
}


TABLE_OPTIONS = ("root", "path_column", "label_column", "label_columns", "label_delimiter", "split_column")


@dataclasses.dataclass(frozen=True)
class Table:
    """A CSV file or a pandas DataFrame of image paths and labels, with the options only a table takes.

    Args:
        source: the CSV file's path, or a DataFrame.
        root: relative paths are resolved against it (default: the CSV file's folder, or the current folder for a
            DataFrame).
        path_column: the column of image paths (default: the first of `path`, `filename`, `file`, `image`).
        label_column: the column of labels: class names (sorted into ids, as folders are) or integers.
        label_columns: instead, one 0/1 column per class (several labels per image), named in class order.
        label_delimiter: splits each label cell into several labels (e.g. `" "`, `","`, `"|"`).
        split_column: the column of predefined splits: `train`, `validation` (`val`, `valid`) or `test`; the
            splits it lacks are drawn from its training rows.

    Rows that cannot be used (file missing, not an image or damaged, empty label, a path listed twice) are left out
    and listed in `info.skipped`.

    Example:
    >>> Table("labels.csv", label_column="tags", label_delimiter=" ").label_delimiter
    ' '
    """

    source: object
    root: object = None
    path_column: str | None = None
    label_column: str = "label"
    label_columns: tuple | None = None
    label_delimiter: str | None = None
    split_column: str | None = None

    def records(self):
        return table_records(self)


def is_dataframe(source):
    return type(source).__name__ == "DataFrame" and hasattr(source, "columns") and hasattr(source, "to_dict")


def table_records(table):
    """A CSV file or DataFrame of image paths and labels (`load_dataset`'s table arguments) as records: every row
    checked, the unusable ones in `skipped` with their row and reason."""
    delimiter = table.label_delimiter
    if delimiter is not None and (not isinstance(delimiter, str) or not delimiter):
        raise ValueError(f"label_delimiter must be a non-empty string, e.g. ' ' or '|'. Received: {delimiter!r}")
    if table.label_delimiter is not None and table.label_columns is not None:
        raise ValueError(
            "Pass label_delimiter (one label column) or label_columns (one 0/1 column per label), not both."
        )
    name, rows, columns, root = _read_table(table.source, table.root)
    path_column = _table_column(table.path_column, columns, "path_column", PATH_COLUMNS)
    class_names, original_ids, labels = _row_labels(table, rows, columns)
    multi = table.label_columns is not None or table.label_delimiter is not None
    split_column = table.split_column and _table_column(table.split_column, columns, "split_column")
    outliers = []
    usable, skipped = _usable_rows(rows, labels, path_column, root, outliers)
    if table.label_columns is None:  # classes are what the usable rows name; one named only by left-out rows is not
        class_names, original_ids, usable = _named_classes(class_names, original_ids, usable)
    if len(class_names) < 2 and not multi:
        raise ValueError(
            f"The table {name!r} names {len(class_names)} class{'es' if len(class_names) != 1 else ''} in its usable "
            f"rows ({', '.join(map(str, class_names)) or 'none'}); a classifier needs at least two. "
            f"{len(skipped)} rows were left out."
        )
    warn_similar_names(class_names, f"the table {name!r}")
    paths, labels, duplicates = _split_rows(name, rows, usable, split_column, len(class_names), multi, len(skipped))
    skipped += duplicates

    def images(split, idx):
        files = paths[split][idx]
        return lambda labels, size, shuffle_seed, dtype: decode_files(files, labels, size, shuffle_seed, dtype)

    return Records(
        name,
        class_names,
        original_ids,
        labels,
        images,
        skipped=skipped,
        outliers=outliers,
        multi_label=multi,
        files=paths,
    )


def _split_rows(name, rows, usable, split_column, n_classes, multi, n_skipped):
    """`(paths, labels, duplicates)`: the usable rows by split (the split column's value, else train), each image
    once (`one_per_image`)."""
    splits = {}
    for i, path, ids in usable:
        split = _split_value(*rows[i], split_column) if split_column else "train"
        splits.setdefault(split, []).append((rows[i][0], path, ids))
    if "train" not in splits:
        raise ValueError(f"The table {name!r} has no usable training rows ({n_skipped} rows skipped).")

    def as_labels(entries):
        if not multi:
            return np.array([ids[0] for _, _, ids in entries], dtype=np.int64)
        matrix = np.zeros((len(entries), n_classes), np.uint8)
        for i, (_, _, ids) in enumerate(entries):
            matrix[i, ids] = 1
        return matrix

    paths = {
        split: np.array([os.fsencode(p) for _, p, _ in entries], dtype=object) for split, entries in splits.items()
    }
    labels = {split: as_labels(entries) for split, entries in splits.items()}
    row_numbers = {split: [row for row, _, _ in entries] for split, entries in splits.items()}
    keep, duplicates = one_per_image(paths, labels, row_numbers)
    return *({split: values[split][keep[split]] for split in values} for values in (paths, labels)), duplicates


def _row_labels(table, rows, columns):
    """`(class names, original ids, [(row, label ids or None)])` from the table's label column(s)."""
    if table.label_columns is not None:
        label_columns = [_table_column(c, columns, "label_columns") for c in table.label_columns]
        if len(label_columns) < 2:
            raise ValueError(f"label_columns must name at least two columns. Received: label_columns={label_columns!r}")
        labels = [(row, _zero_one_row(row, cells, label_columns)) for row, cells in rows]
        return list(label_columns), list(label_columns), labels
    column = _table_column(table.label_column, columns, "label_column")
    cells = [(row, _label_set(cells[column], table.label_delimiter)) for row, cells in rows]
    _check_delimiter(table.label_delimiter, rows, column)
    class_names, original_ids = _label_names([names for _, names in cells], column)
    labels = [(row, sorted(class_names.index(n) for n in names) if names else None) for row, names in cells]
    return class_names, original_ids, labels


def _named_classes(class_names, original_ids, usable):
    """The classes that usable rows name (in their order), and those rows' label ids in them."""
    named = sorted({i for _, _, ids in usable for i in ids})
    if len(named) == len(class_names):
        return class_names, original_ids, usable
    left_out = [class_names[i] for i in range(len(class_names)) if i not in named]
    logger.warning("Classes named only by rows left out are not classes: %s.", ", ".join(map(str, left_out)))
    new_id = {old: new for new, old in enumerate(named)}
    usable = [(i, path, [new_id[j] for j in ids]) for i, path, ids in usable]
    return [class_names[i] for i in named], [original_ids[i] for i in named], usable


def _read_table(source, root):
    """`(name, rows, columns, root)`: rows are `(row number, {column: cell text})`, numbered by CSV line (the
    header is line 1) or DataFrame index; `root` resolved."""
    if is_dataframe(source):
        columns = [str(c) for c in source.columns]
        records = source.to_dict("records")
        rows = [(index, {str(k): _cell_text(v) for k, v in r.items()}) for index, r in zip(source.index, records)]
        name, folder = "dataframe", os.getcwd()
    else:
        name = os.fspath(source)
        try:
            with open(name, "rb") as f:
                text = f.read().decode("utf-8-sig")
        except UnicodeDecodeError as e:
            line = e.object[: e.start].count(b"\n") + 1
            raise ValueError(
                f"The table {name!r} is not UTF-8 text: byte {e.object[e.start : e.start + 1]!r} on line {line}. "
                "Save it as UTF-8 (e.g. pandas: df.to_csv(path, index=False, encoding='utf-8'))."
            ) from None
        reader = csv.reader(io.StringIO(text, newline=""))
        columns = [c.strip() for c in next(reader, [])]
        rows = []
        for cells in reader:
            if not any(c.strip() for c in cells):  # blank lines are not rows
                continue
            if len(cells) < len(columns) or any(c.strip() for c in cells[len(columns) :]):  # trailing empty: fine
                raise ValueError(
                    f"Line {reader.line_num} of the table {name!r} has {len(cells)} cells where the header has "
                    f"{len(columns)} ({', '.join(columns)}): {','.join(cells)!r}. Quote a cell that holds a comma; "
                    "give every row a cell for every column (an empty one where it has no value)."
                )
            rows.append((reader.line_num, dict(zip(columns, (c.strip() for c in cells)))))
        folder = os.path.dirname(os.path.abspath(name))
    if not rows:
        raise ValueError(f"The table {name!r} has no rows (columns: {', '.join(columns) or 'none'}).")
    return name, rows, columns, os.fspath(root) if root is not None else folder


def _cell_text(value):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, (bool, np.bool_)):
        return "1" if value else "0"
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value).strip()


def _table_column(name, columns, argument, defaults=None):
    if name is None and defaults:
        found = next((c for c in defaults if c in columns), None)
        if found is None:
            raise ValueError(
                f"No image path column: none of {', '.join(defaults)} is among the table's columns "
                f"({', '.join(columns)}). Pass {argument}=... naming it."
            )
        return found
    if name not in columns:
        raise ValueError(
            f"The table has no column {name!r}; its columns: {', '.join(columns)}. Received: {argument}={name!r}"
        )
    return name


def _label_set(cell, delimiter):
    if delimiter is None:
        return [cell] if cell else []
    return sorted({part.strip() for part in cell.split(delimiter) if part.strip()})


def _check_delimiter(delimiter, rows, column):
    if delimiter is None or any(delimiter in cells[column] for _, cells in rows):
        return
    seen = next((c for c in (" ", ",", "|", ";") if any(c in cells[column] for _, cells in rows)), None)
    hint = f"; the cells hold {seen!r}: pass label_delimiter={seen!r}" if seen else ""
    raise ValueError(
        f"label_delimiter={delimiter!r} splits no cell of column {column!r} (e.g. row {rows[0][0]}: "
        f"{rows[0][1][column]!r}), so every image would have one label{hint}. For one label per image, pass no "
        "label_delimiter."
    )


def _label_names(name_sets, column):
    """Class names in label order and their original ids: integers sorted by value (kept as ints), or names
    sorted (as folders are); a column holding both is refused."""
    names = sorted({n for names in name_sets for n in names})
    numbers = [n for n in names if re.fullmatch(r"-?\d+", n)]
    if numbers and len(numbers) < len(names):
        text = next(n for n in names if n not in numbers)
        raise ValueError(
            f"Column {column!r} holds both numbers and names (e.g. {numbers[0]!r} and {text!r}): labels must be all "
            "class names or all integer ids."
        )
    if numbers:
        names = sorted(names, key=int)
        return names, [int(n) for n in names]
    return names, list(names)


def _zero_one_row(row, cells, columns):
    ids = []
    for i, column in enumerate(columns):
        value = cells[column].lower()
        if value not in ("0", "1", "true", "false", "0.0", "1.0"):
            raise ValueError(
                f"Row {row}, column {column!r}: {cells[column]!r} is not 0 or 1 (label_columns hold one 0/1 "
                "column per class)."
            )
        if value in ("1", "true", "1.0"):
            ids.append(i)
    return ids


def _usable_rows(rows, labels, path_column, root, outliers):
    """`(row index, path, label ids)` for every usable row, and `(path, "row N: reason")` for the others: no path,
    no label (one label per image), file missing or not a whole image."""
    usable, skipped = [], []
    for i, ((row, cells), (_, ids)) in enumerate(zip(rows, labels)):
        given = cells.get(path_column, "")
        path = os.path.normpath(os.path.join(root, os.path.expanduser(given))) if given else ""
        reason = None
        if not given:
            reason = "empty path"
        elif ids is None:
            reason = "empty label"
        elif not os.path.isfile(path):
            reason = "file missing" if not os.path.exists(path) else "not a file"
        else:
            reason = image_problem(path, outliers)
        if reason:
            skipped.append((path or given, f"row {row}: {reason}"))
            continue
        usable.append((i, path, ids))
    if skipped:
        logger.warning(
            "%d table row%s left out (see info.skipped), e.g. %s", len(skipped), "s"[: len(skipped) != 1], skipped[0][1]
        )
    return usable, skipped


def _split_value(row, cells, column):
    value = cells.get(column, "").lower()
    if value not in SPLIT_VALUES:
        raise ValueError(
            f"Row {row}, column {column!r}: split {cells.get(column, '')!r} is not one of train, validation (val, "
            "valid) or test."
        )
    return SPLIT_VALUES[value]


def unlabelled_paths(source, label_column="label"):
    """The images of a table's rows without a label (a table of paths alone, or the rows of a labelled table
    whose `label_column` cell is empty): `(paths, skipped)`, relative paths from the table's folder, and `(path,
    "row N: reason")` for rows whose file is missing or not a whole image."""
    name, rows, columns, root = _read_table(source, None)
    path_column = _table_column(None, columns, "path_column", PATH_COLUMNS)
    paths, skipped = [], []
    for row, cells in rows:
        given = cells.get(path_column, "")
        if cells.get(label_column, "") or not given:  # a labelled row belongs to the labelled source
            continue
        path = os.path.normpath(os.path.join(root, os.path.expanduser(given)))
        reason = ("file missing" if not os.path.exists(path) else "not a file") if not os.path.isfile(path) else None
        reason = reason or image_problem(path)
        if reason:
            skipped.append((path, f"row {row}: {reason}"))
        else:
            paths.append(path)
    return paths, skipped
