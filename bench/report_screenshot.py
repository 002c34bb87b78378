"""Screenshot a run report in headless Chromium, to see what a user sees.

    python bench/report_screenshot.py runs/local [--out report.png] [--width 1200 --height 2000]

Needs a Chromium binary (`apt-get install -y chromium` on Debian). Prints the PNG's path as JSON.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    raise SystemExit("no Chromium found (apt-get install -y chromium)")


def screenshot(page: Path, out: Path, width: int = 1200, height: int = 2000, timeout_s: float = 60) -> Path:
    out = Path(out).resolve()
    with tempfile.TemporaryDirectory() as profile:  # no shared profile: concurrent runs do not clash
        subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        f"--user-data-dir={profile}", f"--screenshot={out}", f"--window-size={width},{height}",
                        Path(page).resolve().as_uri()],
                       check=True, capture_output=True, timeout=timeout_s)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--out", type=Path, default=Path("report.png"))
    p.add_argument("--width", type=int, default=1200)
    p.add_argument("--height", type=int, default=2000)
    args = p.parse_args(argv)
    png = screenshot(args.run_dir / "report" / "index.html", args.out, args.width, args.height)
    print(json.dumps({"screenshot": str(png)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
