"""Which index rows a mount shows: an IDC release, a cloud, and a cohort.

**Versions.** IDC release N is, for every SeriesInstanceUID, the content it had in N:

* a row of `idc_index.parquet` is a series' current content, valid from its
  `series_revised_idc_version` to the newest release;
* a row of `prior_versions_index.parquet` is an older content of a series, valid from its
  `min_idc_version` to its `max_idc_version` (series removed since exist only there);

so release N is the current rows with `series_revised_idc_version <= N` plus the prior rows whose
range holds N. Checked against idc-index-data 25.0.5: no SeriesInstanceUID has two rows in any
release, and no prior range overlaps its series' current row (prior rows split into two ranges
for one crdc_series_uuid are both kept; they never hold the same N). Prior rows carry their own
collection, patient, study, modality and buckets; the other columns (license, DOI, descriptions)
are taken from the series' current row, and are empty for a series removed since.

**Clouds.** On AWS the row's `aws_bucket`; on GCS the row's `gcs_bucket` where the index has one
(prior rows: `public-datasets-idc` before release 19), else IDC's mapping of the AWS bucket.

**Cohorts.** `--collection`, `--license`, `--exclude-license` and `--filter` (any SQL condition over
the index's columns) narrow the rows. The filter is a single duckdb expression applied through
the relational API (no second statement can follow it) on a connection that may read only the
index files (`enable_external_access` off, configuration locked): it cannot touch anything else.
A series whose license is unknown (removed since) is left out by `--license` and
`--exclude-license` alike, so a license filter never lets through data it cannot vouch for.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..checks import UsageError
from . import layout

PRIOR_FILE = "prior_versions_index.parquet"
VERSIONS_FILE = "version_metadata_index.parquet"
GCS_BUCKETS = {
    "idc-open-data": "idc-open-data",
    "idc-open-data-two": "idc-open-idc1",
    "idc-open-data-cr": "idc-open-cr",
}
PRIOR_OWN_COLUMNS = ("collection_id", "PatientID", "StudyInstanceUID", "Modality",
                     "SeriesInstanceUID", "crdc_series_uuid", "aws_bucket", "series_aws_url",
                     "series_size_MB")


class BadSelection(UsageError):
    """The options ask for rows the index cannot give; the message says which and why."""


@dataclass(frozen=True)
class Selection:
    idc_version: int | None = None
    source: str = "aws"
    collections: tuple[str, ...] = ()
    licenses: tuple[str, ...] = ()
    exclude_licenses: tuple[str, ...] = ()
    filter: str | None = None
    manifest: str | None = None
    manifest_sha256: str | None = None
    layout: str = "default"

    def key(self) -> str:
        """A stable text of everything that changes which rows are shown."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_key(cls, text: str) -> Selection:
        data = json.loads(text)
        for name in ("collections", "licenses", "exclude_licenses"):
            data[name] = tuple(data[name])
        return cls(**data)


_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_SERIES_UID = re.compile(r"[0-9]+(\.[0-9]+)+")
_URL = re.compile(r"(?:s3|gs)://[^/\s]+/(" + _UUID.pattern + r")/")


def read_manifest(path: Path) -> list[str]:
    """Series named by a manifest: crdc_series_uuids and SeriesInstanceUIDs, in file order.

    Accepts the IDC portal's s5cmd manifests (`cp s3://<bucket>/<crdc_series_uuid>/* <dir>`, with
    AWS or GCS URLs) and plain lists of SeriesInstanceUIDs or crdc_series_uuids, one a line;
    blank lines and `#` comments are skipped. A line that names no series is an error.
    """
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise BadSelection(f"cannot read manifest {path}: {reason}") from None
    entries = []
    for number, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        url = _URL.search(text)
        if url:
            entries.append(url.group(1))
        elif _UUID.fullmatch(text.lower()):
            entries.append(text.lower())
        elif _SERIES_UID.fullmatch(text):
            entries.append(text)
        else:
            raise BadSelection(f"line {number} of manifest {path} names no series: {text[:80]!r}")
    return entries


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def known_versions(index_dir: Path) -> list[int]:
    """The IDC releases this index can show; none if it does not say (an unversioned index)."""
    versions_file = index_dir / VERSIONS_FILE
    if versions_file.is_file():
        return sorted(pq.read_table(versions_file, columns=["idc_version"]).column(0).to_pylist())
    index_file = index_dir / "idc_index.parquet"
    if "series_revised_idc_version" not in pq.read_schema(index_file).names:
        return []
    column = pq.read_table(index_file, columns=["series_revised_idc_version"]).column(0)
    newest = pc.max(column).as_py()
    return list(range(1, int(newest) + 1)) if newest else []


def needs_prior(index_dir: Path, version: int | None) -> bool:
    """Whether release version shows some series in an older content (prior rows): releases
    after the last one any prior row is valid for need no join with them."""
    prior_path = index_dir / PRIOR_FILE
    if version is None or not prior_path.is_file():
        return False
    column = pq.read_table(prior_path, columns=["max_idc_version"]).column(0)
    return version <= int(pc.max(column).as_py() or 0)


def connect(index_dir: Path):
    """A duckdb connection that can read the index files and nothing else."""
    import duckdb

    con = duckdb.connect(config={"threads": 2})
    allowed = [str(p) for p in (index_dir / "idc_index.parquet", index_dir / PRIOR_FILE)
               if p.exists()]
    con.execute(f"SET allowed_paths=[{', '.join(_quote(p) for p in allowed)}]")
    con.execute("SET enable_external_access=false")
    con.execute("SET lock_configuration=true")
    return con


def rows(con, index_dir: Path, sel: Selection):
    """A relation of the selected rows: the index's columns plus `bucket` (the source's)."""
    index = _quote(str(index_dir / "idc_index.parquet"))
    prior_path = index_dir / PRIOR_FILE
    columns = pq.read_schema(index_dir / "idc_index.parquet").names
    gcs_map = "CASE aws_bucket " + " ".join(
        f"WHEN {_quote(a)} THEN {_quote(g)}" for a, g in GCS_BUCKETS.items()
    ) + " ELSE aws_bucket END"
    bucket = "aws_bucket" if sel.source == "aws" else "gcs_bucket"
    version = sel.idc_version
    current = f"SELECT *, {gcs_map} AS gcs_bucket FROM read_parquet({index})"
    if "series_revised_idc_version" in columns and version is not None:
        current += f" WHERE series_revised_idc_version <= {int(version)}"
    parts = [current]
    if needs_prior(index_dir, version):
        prior_names = set(pq.read_schema(prior_path).names)
        select = [f"p.{c}" if c in PRIOR_OWN_COLUMNS and c in prior_names
                  else ("CAST(NULL AS BIGINT)" if c == "instanceCount" else f"c.{c}")
                  for c in columns]
        gcs = ("p.gcs_bucket" if "gcs_bucket" in prior_names
               else gcs_map.replace("aws_bucket", "p.aws_bucket"))
        parts.append(
            f"SELECT {', '.join(f'{s} AS {c}' for s, c in zip(select, columns))}, "
            f"{gcs} AS gcs_bucket "
            f"FROM read_parquet({_quote(str(prior_path))}) p "
            f"LEFT JOIN read_parquet({index}) c ON p.SeriesInstanceUID = c.SeriesInstanceUID "
            f"WHERE p.min_idc_version <= {int(version)} AND {int(version)} <= p.max_idc_version")
    rel = con.sql(" UNION ALL ".join(parts))
    conditions = []
    if sel.collections:
        conditions.append(f"collection_id IN ({', '.join(map(_quote, sel.collections))})")
    if sel.licenses:
        conditions.append(f"license_short_name IN ({', '.join(map(_quote, sel.licenses))})")
    if sel.exclude_licenses:
        conditions.append(f"license_short_name IS NOT NULL AND license_short_name NOT IN "
                          f"({', '.join(map(_quote, sel.exclude_licenses))})")
    for condition in conditions:
        rel = rel.filter(condition)
    if sel.filter:
        rel = rel.filter(sel.filter)
    if sel.manifest:
        con.register("manifest_ids", pa.table({"id": read_manifest(Path(sel.manifest))}))
        rel = rel.filter("crdc_series_uuid IN (SELECT id FROM manifest_ids) "
                         "OR SeriesInstanceUID IN (SELECT id FROM manifest_ids)")
    return rel.project(f"*, {bucket} AS bucket")


def check(index_dir: Path, sel: Selection) -> str | None:
    """Raise BadSelection, in one line, for a version, collection, filter or manifest the index
    rejects; return a notice for a person when manifest entries are not in the release."""
    try:
        layout.parse(sel.layout, pq.read_schema(index_dir / "idc_index.parquet").names)
    except layout.BadLayout as exc:
        raise BadSelection(str(exc)) from None
    if sel.idc_version is not None:
        versions = known_versions(index_dir)
        if sel.idc_version not in versions:
            span = f"{versions[0]}-{versions[-1]}" if versions else "none"
            raise BadSelection(f"IDC version {sel.idc_version} is not in this index "
                               f"(it knows versions {span})")
    if not sel.collections and not sel.filter and not sel.manifest:
        return None
    import duckdb  # only here: its import is ~30 ms of every mount

    con = connect(index_dir)
    try:
        if sel.collections:
            have = {r[0] for r in con.sql(
                f"SELECT DISTINCT collection_id FROM read_parquet("
                f"{_quote(str(index_dir / 'idc_index.parquet'))})").fetchall()}
            unknown = sorted(set(sel.collections) - have)
            if unknown:
                raise BadSelection(f"unknown collection(s): {', '.join(unknown)}")
        try:
            selected = rows(con, index_dir, sel)
            selected.limit(0).fetchall()
        except duckdb.Error as exc:
            first = str(exc).splitlines()[0].split(": ", 1)[-1]
            raise BadSelection(f"bad --filter {sel.filter!r}: {first}") from None
        if sel.manifest:
            selected.create_view("selected_rows")
            missing = [r[0] for r in con.sql(
                "SELECT id FROM manifest_ids WHERE id NOT IN (SELECT crdc_series_uuid FROM "
                "selected_rows) AND id NOT IN (SELECT SeriesInstanceUID FROM selected_rows)"
            ).fetchall()]
            if missing:
                total = con.sql("SELECT count(*) FROM manifest_ids").fetchall()[0][0]
                return (f"{len(missing)} of {total} manifest entries are not in IDC version "
                        f"{sel.idc_version} with these options and are left out "
                        f"(first: {', '.join(missing[:3])})")
        return None
    finally:
        con.close()
