"""Directory layouts: idc-index's `dirTemplate`, extended to any column of the index.

A layout is a template of directory levels separated by `/`; each level is placeholders
(`%collection_id`, `%PatientID`, `%StudyInstanceUID`, `%SeriesInstanceUID`, `%Modality`, or any
other column of the index, e.g. `%SeriesDescription`, `%StudyDate`) and literal separators
between them (`%Modality_%SeriesInstanceUID`). The files of a series go in its last level.
The default is idc-index's own default, so a path under the mount is the path `idc download`
would have written; the empty layout (`flat`) puts every file in the root.

A placeholder is the longest column name that follows the `%`, so `%Modality_%SeriesInstanceUID`
is Modality, `_`, SeriesInstanceUID. An empty value becomes an empty string before the name is
escaped (naming.py), so a level of only an empty value is named `%`.

Collisions are resolved by merging, as `idc download` does: series whose paths are equal share
one folder, which then holds the files of all of them (file names, crdc_instance_uuids, never
collide). The order of everything is fixed (byte order of the names), so a layout always gives
the same tree.
"""

from __future__ import annotations

from collections.abc import Sequence

PRESETS = {
    "default": "%collection_id/%PatientID/%StudyInstanceUID/%Modality_%SeriesInstanceUID",
    "patient": "%collection_id/%PatientID/%Modality_%SeriesInstanceUID",
    "series": "%collection_id/%Modality_%SeriesInstanceUID",
    "described": "%collection_id/%PatientID/%StudyDate_%StudyInstanceUID"
                 "/%Modality_%SeriesNumber_%SeriesDescription_%SeriesInstanceUID",
    "flat": "",
}


MAX_LEVELS = 100


class BadLayout(ValueError):
    """A template that cannot be read; the message names the problem."""


def resolve(template: str) -> str:
    """A preset's template, or the template itself."""
    return PRESETS.get(template, template)


def parse(template: str, columns: Sequence[str]) -> list[list[tuple[str, str]]]:
    """Levels of (kind, text) parts: ("column", name) or ("text", literal)."""
    template = resolve(template).strip("/")
    if not template:
        return []
    by_length = sorted(columns, key=len, reverse=True)
    levels = []
    if template.count("/") >= MAX_LEVELS:
        raise BadLayout(f"layout {template!r} has more than {MAX_LEVELS} levels")
    for segment in template.split("/"):
        if not segment:
            raise BadLayout(f"layout {template!r} has an empty level (two slashes)")
        parts: list[tuple[str, str]] = []
        i = 0
        while i < len(segment):
            if segment[i] == "%":
                name = next((c for c in by_length if segment.startswith(c, i + 1)), None)
                if name is None:
                    word = segment[i + 1:].split("_")[0].split("-")[0] or segment[i:]
                    raise BadLayout(f"unknown placeholder %{word} in layout {template!r}: a "
                                    f"placeholder is % and a column of the index")
                parts.append(("column", name))
                i += 1 + len(name)
            else:
                end = segment.find("%", i)
                end = len(segment) if end < 0 else end
                parts.append(("text", segment[i:end]))
                i = end
        if not any(kind == "column" for kind, _ in parts):
            raise BadLayout(f"level {segment!r} of layout {template!r} has no placeholder")
        levels.append(parts)
    return levels


def level_sql(parts: list[tuple[str, str]]) -> str:
    """The SQL expression naming one level of a row."""
    sql = []
    for kind, text in parts:
        if kind == "column":
            sql.append(f'coalesce(CAST("{text}" AS VARCHAR), \'\')')
        else:
            sql.append("'" + text.replace("'", "''") + "'")
    return " || ".join(sql)


def columns_of(levels: list[list[tuple[str, str]]]) -> list[list[str]]:
    """The columns named in each level."""
    return [[text for kind, text in parts if kind == "column"] for parts in levels]
