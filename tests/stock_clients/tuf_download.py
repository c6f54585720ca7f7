"""An unmodified python-tuf client (no imagectl code): refresh from a trusted root, look a target up through the
delegations, download it with python-tuf's default fetcher, print the outcome as one JSON line. Exit 0 on success,
1 when python-tuf refused or failed.

    python3 tuf_download.py METADATA_URL TARGETS_URL TRUSTED_ROOT TARGET_PATH WORK_DIR
"""

import json
import pathlib
import sys

from tuf.ngclient import Updater


def main(metadata_url: str, targets_url: str, trusted_root: str, target: str, work: str) -> int:
    metadata_dir = pathlib.Path(work, "metadata")
    target_dir = pathlib.Path(work, "targets")
    metadata_dir.mkdir(parents=True, exist_ok=True)
    target_dir.mkdir(parents=True, exist_ok=True)
    try:
        updater = Updater(
            metadata_dir=str(metadata_dir),
            metadata_base_url=metadata_url,
            target_base_url=targets_url,
            target_dir=str(target_dir),
            bootstrap=pathlib.Path(trusted_root).read_bytes(),
        )
        updater.refresh()
        info = updater.get_targetinfo(target)
        if info is None:
            raise LookupError(f"no target {target}")
        out = updater.download_target(info)
    except Exception as e:  # the outcome is the output, whatever it is
        print(json.dumps({"ok": False, "error": type(e).__name__, "message": str(e)}))
        return 1
    print(json.dumps({"ok": True, "path": out, "bytes": pathlib.Path(out).stat().st_size}))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
