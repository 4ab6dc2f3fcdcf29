#!/usr/bin/env bash
# `make sdk-check`: the SDK installed alone in a fresh venv (pydantic, httpx, websockets; no numpy, OpenCV or
# server), checked offline and then against a real server started from the development venv.
# Usage: clients/python/sdk_check.sh DEV_PYTHON [BASE_PYTHON]
set -euo pipefail
dev=$1
base=${2:-python3}
cd "$(dirname "$0")/../.."
rm -rf .venv-sdk
"$base" -m venv .venv-sdk
.venv-sdk/bin/pip install -q ./clients/python
rm -rf clients/python/build clients/python/*.egg-info  # what the build left in the source folder
if .venv-sdk/bin/python -c "import numpy" 2>/dev/null; then echo "the SDK pulled in numpy" >&2; exit 1; fi

work=$(mktemp -d)
port=$("$dev" -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
EMOSERVE_MODEL_ROOT="$work/models" "$dev" -m emoserve_cli serve --host 127.0.0.1 --port "$port" > "$work/serve.log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true; rm -rf "$work"' EXIT
"$dev" - "$port" "$work/face.jpg" <<'PY'
import sys, time, urllib.request
from pathlib import Path
import cv2, numpy as np
port, out = sys.argv[1], Path(sys.argv[2])
photo = Path("../shared/media/photos/obama.jpg")
img = cv2.imread(str(photo)) if photo.exists() else None
if img is None:  # no ../shared: a smooth synthetic image (the SDK's calls do not need a face)
    img = cv2.GaussianBlur(np.random.default_rng(0).integers(0, 255, (240, 320, 3)).astype(np.uint8), (0, 0), 3)
cv2.imwrite(str(out), img)
for _ in range(240):
    try:
        if urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2).status == 200:
            break
    except OSError:
        time.sleep(0.5)
else:
    sys.exit("the server did not become ready")
PY
.venv-sdk/bin/python -P clients/python/smoke_check.py "http://127.0.0.1:$port" "$work/face.jpg"
