"""idcfs as another checkout has it, for comparing two versions of the code in one run.

    .venv/bin/python bench/idcfs_from.py TREE mount MOUNTPOINT [options...]

TREE is a checkout (`git worktree add /tmp/old HEAD~1`). Putting TREE first on PYTHONPATH does
not do this: the editable install's import hook finds this checkout's idcfs before sys.path is
searched, so both sides of such a comparison run the same code. The daemon (forked) and its S3
process (started as `idcfs_from.py TREE -m idcfs.s3.serve ...`) run TREE's code; the index
build's child process runs the installed checkout's.
"""

import runpy
import sys
from pathlib import Path

if len(sys.argv) < 2:
    sys.exit("usage: idcfs_from.py TREE [idcfs arguments...]")
tree = str(Path(sys.argv.pop(1)).resolve())
if not (Path(tree) / "idcfs" / "cli.py").is_file():
    sys.exit(f"idcfs_from: {tree} is not an idcfs checkout (no idcfs/cli.py)")
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in getattr(f, "__module__", "")]
sys.path.insert(0, tree)

if sys.argv[1:2] == ["-m"]:  # a process the daemon starts, as `python -m MODULE ...`
    module = sys.argv[2]
    sys.argv[1:3] = []
    runpy.run_module(module, run_name="__main__", alter_sys=True)
    sys.exit()

from idcfs.cli import main  # noqa: E402

if not main.__code__.co_filename.startswith(tree):
    sys.exit(f"idcfs_from: idcfs came from {main.__code__.co_filename}, not {tree}")
try:
    from idcfs import source_process  # noqa: E402
except ImportError:  # a checkout from before the S3 process
    pass
else:
    source_process.COMMAND = (sys.executable, __file__, tree, "-m", "idcfs.s3.serve")
sys.exit(main())
