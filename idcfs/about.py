"""The read-only `/.idcfs/` directory: what a mount shows, how it is doing, what to cite.

Files, generated when opened (so `stats` is live):

* `version`   the IDC release the mount shows;
* `options`   the mount's source, endpoint, release, cohort options and filter (JSON);
* `stats`     bytes fetched, requests, cache hits, errors, disk cache use (JSON);
* `citations` each source_DOI of the data shown, with its license, collections and number of
  series (tab-separated, with a header), so that users can cite the data they used.
"""

from __future__ import annotations

import json
from collections.abc import Callable

DIRECTORY = ".idcfs"
FILES = ("version", "options", "stats", "citations")


class About:
    """The contents of the files of /.idcfs/, from the tree's metadata and live counters."""

    def __init__(self, meta: dict, options: dict, stats: Callable[[], dict]) -> None:
        self.meta = meta
        self.options = options
        self.stats = stats

    def content(self, name: str) -> bytes:
        if name == "version":
            return f"{self.meta.get('idc_version')}\n".encode()
        if name == "options":
            return (json.dumps(self.options, indent=1, sort_keys=True) + "\n").encode()
        if name == "stats":
            return (json.dumps(self.stats(), indent=1, sort_keys=True) + "\n").encode()
        lines = ["source_DOI\tlicense\tseries\tcollections"]
        for c in self.meta.get("citations", []):
            doi = f"https://doi.org/{c['source_DOI']}" if c["source_DOI"] else "(no DOI in the index)"
            lines.append(f"{doi}\t{c['license'] or '(unknown)'}\t{c['series']}\t"
                         f"{','.join(c['collections'])}")
        return ("\n".join(lines) + "\n").encode()
