"""The README's bash examples that talk to the server run as written against a live server.

Every fenced bash block of README.md is a test case: a block that talks to the server (names
`localhost:8000` or `127.0.0.1:8000`) runs in bash with `set -euo pipefail` against a real
`emoserve serve` (default shipped models, an admin key), with the port rewritten; each other block is
skipped with its reason, so a new example cannot go unexercised without a stated reason.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import cv2
import pytest

from tests.api_server import REPO, Server, run_server
from tests.conftest import SHARED, shared_path

SERVER_ADDRESS = re.compile(r"\b(?:localhost|127\.0\.0\.1):8000\b")
ADMIN_KEY = "ADMIN_KEY"  # the placeholder the README uses, configured on the test server
# why a block is not run, by a phrase it contains (checked in this order)
NOT_RUN = {
    "make run": "sets up .venv and serves on port 8000 (the test suite itself is `make test`)",
    "emoserve models catalog": "changes the model store and pulls from the network (tests/test_pull.py covers pull)",
    "emoserve stream": "a usage synopsis with [OPTIONS] placeholders, and a 464-frame video stream",
}


def bash_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```bash\n(.*?)^```", markdown, re.S | re.M)


BLOCKS = bash_blocks((REPO / "README.md").read_text(encoding="utf-8"))


def skip_reason(block: str) -> str | None:
    for phrase, reason in NOT_RUN.items():
        if phrase in block:
            return reason
    if not SERVER_ADDRESS.search(block):
        return "does not talk to the server"
    return None


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("readme-root")
    env = {"EMOSERVE_MODEL_ROOT": str(root), "EMOSERVE_ADMIN_KEYS": f'["{ADMIN_KEY}"]'}
    with run_server(env, tmp_path_factory.mktemp("readme-logs")) as s:
        yield s


def run_block(block: str, server: Server, workdir: Path) -> subprocess.CompletedProcess[str]:
    """Run `block` in bash from a checkout-like folder (../shared beside it); every curl fails on an HTTP error.

    With keys configured every request needs one, so curl sends the admin key (admin keys may do what
    clients may); the README's own admin example sends it too.
    """
    checkout = workdir / "checkout"
    checkout.mkdir()
    (workdir / "shared").symlink_to(SHARED, target_is_directory=True)
    prelude = (
        "set -euo pipefail\n"
        f"curl() {{ command curl -sS --fail-with-body --max-time 60 -H 'Authorization: Bearer {ADMIN_KEY}' \"$@\"; }}\n"
    )
    script = prelude + SERVER_ADDRESS.sub(server.url.removeprefix("http://"), block)
    return subprocess.run(
        ["bash", "-c", script], cwd=checkout, capture_output=True, text=True, timeout=300, check=False
    )


def test_readme_has_server_examples() -> None:
    assert [b for b in BLOCKS if skip_reason(b) is None], "no README example talks to the server"
    # a photo's base64 on the command line fails with "Argument list too long": it must go through stdin
    assert not [b for b in BLOCKS if "$(base64" in b]


@pytest.mark.parametrize("block", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_bash_block(block: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    reason = skip_reason(block)
    if reason is not None:
        pytest.skip(f"README block starting {block.splitlines()[0]!r}: {reason}")
    for path in re.findall(r"\.\./shared/([\w./-]+)", block):
        shared_path(path)  # skips with the reason when ../shared is absent
    server: Server = request.getfixturevalue("server")
    proc = run_block(block, server, tmp_path)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    if "/v1/analyze" in block:
        assert '"faces":[{' in proc.stdout, proc.stdout[:2000]
    for out in re.findall(r"-o (\S+\.jpg)", block):
        image = cv2.imread(str(tmp_path / "checkout" / out))
        assert image is not None and image.size > 0, f"{out} is not an image"
