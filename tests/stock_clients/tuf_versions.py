"""List every version of one image name with an unmodified python-tuf (no imagectl code), as catalogue/README.md
§9.5 describes: a lookup of any path under the name makes the Updater fetch and verify the name's delegated role
``image-NAME`` (and keep it in its metadata directory); its targets are the versions. Prints one JSON line:
``{"ok": true, "images": [{"version", "arch", "path", "length", "sha256", "channels"}…]}``.

    python3 tuf_versions.py METADATA_URL TRUSTED_ROOT NAME WORK_DIR
"""

import json
import pathlib
import sys

from tuf.api.metadata import Metadata
from tuf.ngclient import Updater


def main(metadata_url: str, trusted_root: str, name: str, work: str) -> int:
    metadata_dir = pathlib.Path(work, "metadata")
    metadata_dir.mkdir(parents=True, exist_ok=True)
    try:
        updater = Updater(
            metadata_dir=str(metadata_dir),
            metadata_base_url=metadata_url,
            bootstrap=pathlib.Path(trusted_root).read_bytes(),
        )
        updater.refresh()
        updater.get_targetinfo(f"{name}/-/-/-")  # no such target; the walk loads and verifies image-NAME
        role = Metadata.from_file(str(metadata_dir / f"image-{name}.json")).signed
    except Exception as e:  # the outcome is the output, whatever it is
        print(json.dumps({"ok": False, "error": type(e).__name__, "message": str(e)}))
        return 1
    channels = role.unrecognized_fields.get("x-imagectl", {}).get("channels", {})
    images = [
        {
            "version": t.custom["version"],
            "arch": t.custom["arch"],
            "path": path,
            "length": t.length,
            "sha256": t.hashes["sha256"],
            "channels": sorted(c for c, p in channels.items() if p["version"] == t.custom["version"]),
        }
        for path, t in sorted(role.targets.items())
    ]
    print(json.dumps({"ok": True, "images": images}))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
