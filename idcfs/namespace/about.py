"""The read-only `/.idcfs/` directory: what a mount shows, how it is doing, what to cite.

A node type of its own beside the tree, behind the same interface. Files, made when opened (so
`stats` is live):

* `version`   the IDC release the mount shows;
* `options`   the mount's source, endpoint, release, cohort options and filter (JSON);
* `stats`     bytes fetched, requests, cache hits, errors, disk cache use, the endpoint's
  health (JSON);
* `citations` each source_DOI of the data shown, with its license, collections and number of
  series (tab-separated, with a header), so that users can cite the data they used.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

from .. import inodes
from .entry import Entry, IsADirectory, NotADirectory, NotFound

DIRECTORY = ".idcfs"
FILES = ("version", "options", "stats", "citations")


class AboutNodes:
    def __init__(self, meta: dict, options: dict, stats: Callable[[], dict]) -> None:
        self.meta = meta
        self.options = options
        self.stats = stats

    def owns(self, inode: int) -> bool:
        return inodes.kind(inode) == inodes.ABOUT

    def _name(self, inode: int) -> str:
        """'' for the directory, a file's name for its files."""
        number = inodes.index(inode)
        if not self.owns(inode) or number > len(FILES):
            raise NotFound
        return FILES[number - 1] if number else ""

    def _entry(self, name: str) -> Entry:
        if not name:
            return Entry(inodes.about(0), True, volatile=True)
        return Entry(inodes.about(1 + FILES.index(name)), False, size=len(self.content(name)),
                     volatile=True)

    @property
    def directory(self) -> Entry:
        return self._entry("")

    async def lookup(self, parent_inode: int, name: bytes) -> Entry:
        if self._name(parent_inode):
            raise NotADirectory
        text = name.decode(errors="replace")
        if text not in FILES:
            raise NotFound
        return self._entry(text)

    async def getattr(self, inode: int) -> Entry:
        return self._entry(self._name(inode))

    def opendir(self, inode: int) -> None:
        if self._name(inode):
            raise NotADirectory

    async def entries(self, inode: int, start: int) -> Iterator[tuple[str, Entry]]:
        self.opendir(inode)
        return ((name, self._entry(name)) for name in FILES[start:])

    async def xattrs(self, inode: int) -> dict[str, str]:
        self._name(inode)
        return {}

    async def open(self, inode: int) -> bytes:
        name = self._name(inode)
        if not name:
            raise IsADirectory
        return self.content(name)

    def content(self, name: str) -> bytes:
        if name == "version":
            return f"{self.meta.get('idc_version')}\n".encode()
        if name == "options":
            return (json.dumps(self.options, indent=1, sort_keys=True) + "\n").encode()
        if name == "stats":
            return (json.dumps(self.stats(), indent=1, sort_keys=True) + "\n").encode()
        lines = ["source_DOI\tlicense\tseries\tcollections"]
        for c in self.meta.get("citations", []):
            doi = (f"https://doi.org/{c['source_DOI']}" if c["source_DOI"]
                   else "(no DOI in the index)")
            lines.append(f"{doi}\t{c['license'] or '(unknown)'}\t{c['series']}\t"
                         f"{','.join(c['collections'])}")
        return ("\n".join(lines) + "\n").encode()
