"""The one settings object (environment prefix `EMOSERVE_`). Create it with `get_settings()`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from model_store.names import parse_ref
from model_store.store import user_root

Provider = Literal["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


def default_providers() -> list[Provider]:
    return ["CUDAExecutionProvider", "CPUExecutionProvider"]


def default_model_root() -> Path:
    return user_root()  # the model store owns it (the training job uses it without the service's settings)


class Settings(BaseSettings):
    """Every knob of emoserve. Each field is read from `EMOSERVE_<FIELD>` (upper case)."""

    model_config = SettingsConfigDict(env_prefix="EMOSERVE_", env_file=None, extra="ignore", validate_default=True)

    # -- model store ---------------------------------------------------------------------------
    model_root: Path = Field(default_factory=default_model_root, description="Writable model store folder.")
    model_mirror: Path | None = Field(
        None, description="Local mirror folder searched first by `emoserve models pull` (e.g. ../shared/models)."
    )
    catalog: Path | None = Field(
        None, description="Catalog file to pull from (default: the one shipped in the package)."
    )
    detector: str = Field(
        "yunet-2023mar@production", description="Face detector reference, NAME@VERSION or NAME@ALIAS."
    )
    classifier: str = Field("emotion-ferplus8@production", description="Emotion classifier reference.")

    # -- runtime -------------------------------------------------------------------------------
    providers: list[Provider] = Field(
        default_factory=default_providers,
        description="onnxruntime execution providers in order of preference; unavailable ones are skipped "
        "(set explicitly with a GPU provider, a start without one logs a warning).",
    )
    require_gpu: bool = Field(False, description="Fail at load when no GPU provider is really in use.")
    int8: bool = Field(
        True,
        description="On the CPU, run a model's int8 graph (`model.int8.onnx`, static QDQ) when its artifact has "
        "one; false runs the float graph.",
    )
    intra_op_threads: int = Field(0, ge=0, le=256, description="onnxruntime intra-op threads (0 = cores / workers).")
    session_concurrency: int = Field(2, ge=1, le=64, description="Concurrent runs allowed per inference session.")
    max_batch: int = Field(32, ge=1, le=1024, description="Dynamic batching: most faces per classifier batch.")
    max_delay_ms: float = Field(
        2.0, ge=0.0, le=1000.0, description="Dynamic batching: longest wait for faces of images in preparation."
    )
    queue_size: int = Field(512, ge=1, le=100_000, description="Items waiting per batcher before `Overloaded`.")

    # -- pipeline ------------------------------------------------------------------------------
    detector_max_side: int = Field(640, ge=64, le=8192, description="Longest side of the image the detector sees.")
    decode_min_side: int = Field(
        1280,
        ge=0,
        le=65536,
        description="A JPEG whose longest side is at least twice this is decoded at 1/2, 1/4 or 1/8 scale "
        "(libjpeg's DCT scaling), never below this side; results stay in the image's own pixels (0 = always full).",
    )
    detector_threshold: float | None = Field(
        None, ge=0.0, le=1.0, description="Face score threshold (default: the detector manifest's)."
    )
    min_face_size: int = Field(0, ge=0, le=4096, description="Ignore faces smaller than this many pixels.")
    max_faces: int = Field(32, ge=1, le=1000, description="Most faces classified per image.")
    max_image_pixels: int = Field(40_000_000, ge=1, description="Pixel limit of a decoded image.")

    # -- HTTP service --------------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="Address `emoserve serve` binds.")
    port: int = Field(8000, ge=0, le=65535, description="Port `emoserve serve` binds.")
    workers: int = Field(1, ge=1, le=64, description="uvicorn worker processes.")
    max_body_bytes: int = Field(20 * 1024 * 1024, ge=1024, description="Largest request body accepted.")
    max_inflight: int = Field(
        64, ge=1, le=100_000, description="Analyses in flight per worker before 503 + Retry-After (admission)."
    )
    body_timeout_s: float = Field(
        15.0, gt=0.0, le=600.0, description="Time a client has to send its whole request body (then 408)."
    )
    max_buffered_body_bytes: int = Field(
        128 * 1024 * 1024, ge=1024, description="Bytes of request bodies read at once per worker (then 503)."
    )
    batch_limit: int = Field(32, ge=1, le=1000, description="Most images in one `/v1/analyze/batch` request.")
    request_timeout_s: float = Field(30.0, gt=0.0, le=600.0, description="Per-request time limit.")
    shutdown_grace_s: float | None = Field(
        None,
        gt=0.0,
        le=3600.0,
        description="Time in-flight requests get on SIGTERM (default: body + request timeouts + 5 s).",
    )
    cors_origins: list[str] = Field(default_factory=list, description="CORS allowlist (JSON list).")
    api_keys: list[str] = Field(
        default_factory=list, description="Client API keys as `sha256:<hex>` (or plain, hashed at start)."
    )
    admin_keys: list[str] = Field(default_factory=list, description="Admin API keys, same forms as api_keys.")

    # -- WebSocket stream (/v1/stream) -----------------------------------------------------------
    ws_max_frame_bytes: int = Field(
        4 * 1024 * 1024,
        ge=1024,
        le=64 * 1024 * 1024,
        description="Largest encoded stream frame; a bigger one closes the stream (1009).",
    )
    ws_max_fps: float = Field(
        60.0,
        ge=0.0,
        le=1000.0,
        description="Most frames per second processed per stream (0 = no cap); the others are dropped.",
    )
    ws_track_max_missed: int = Field(
        10, ge=0, le=10_000, description="Frames a face track may go undetected before it expires."
    )
    ws_auth_timeout_s: float = Field(
        10.0, gt=0.0, le=600.0, description="How long a stream without a key header waits for its `auth` message."
    )
    ws_reuse: bool = Field(True, description="Reuse work across a stream's frames (follow faces, skip unchanged ones).")
    ws_detect_every: int = Field(
        5, ge=1, le=1000, description="With reuse: full face detection at least every this many processed frames."
    )
    ws_reclassify_every: int = Field(
        15, ge=1, le=1000, description="With reuse: a face's emotion is classified again after this many frames."
    )
    ws_reclassify_ms: float = Field(
        1000.0, gt=0.0, le=60_000.0, description="With reuse: ... or after this many milliseconds."
    )
    ws_reuse_change: float = Field(
        10.0,
        ge=0.0,
        le=255.0,
        description="With reuse: crop change (0-255, in any cell of a 4x4 grid) that forces reclassifying.",
    )
    ws_classify_detected: bool = Field(
        False,
        description="With reuse: detect every frame in which a face is classified again, so the crops classified"
        " are those a full analysis makes (with EMOSERVE_WS_REUSE_CHANGE=4: closer agreement, more work per frame).",
    )
    ws_confirm_changes: bool = Field(
        False,
        description="With reuse: when a face classified on followed landmarks changes its label or is unclear (see"
        " EMOSERVE_WS_REUSE_MARGIN), detect the frame and classify the detected crop instead (the label a full"
        " analysis gives; work only where labels change or hesitate).",
    )
    ws_follow_min_size: float = Field(
        20.0,
        ge=0.0,
        le=10_000.0,
        description="With reuse: faces whose short side is under this many px in the grey copy optical flow runs"
        " on (longer side at most 640 px) are detected again on every frame instead of followed (0 = follow all).",
    )
    ws_reuse_margin: float = Field(
        0.3,
        ge=0.0,
        le=1.0,
        description="With reuse: faces whose top two probabilities are closer are classified every frame (and,"
        " with EMOSERVE_WS_CONFIRM_CHANGES, detected every frame).",
    )
    ws_max_streams: int = Field(
        16, ge=1, le=100_000, description="Open streams per worker; one more is closed with 1013 (retry later)."
    )
    ws_allowed_origins: list[str] = Field(
        default_factory=list,
        description="Browser origins allowed to open streams, e.g. https://app.example (JSON list; [] = any).",
    )

    # -- Redis ---------------------------------------------------------------------------------
    redis_url: str | None = Field(None, description="redis://host:port/db; unset = in-process cache and limits.")
    cache_ttl_s: int = Field(300, ge=0, le=86_400 * 30, description="Result cache lifetime (0 disables it).")
    rate_limit_per_s: float = Field(0.0, ge=0.0, description="Token-bucket refill per key or client (0 = off).")
    rate_limit_burst: int = Field(20, ge=1, description="Token-bucket capacity.")

    plugins: list[str] = Field(
        default_factory=list,
        description="`module:function` callables run at start, e.g. to register extra detector families (JSON list).",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")

    @field_validator("model_mirror")
    @classmethod
    def _mirror_exists(cls, v: Path | None) -> Path | None:
        if v is not None and not Path(v).is_dir():
            raise ValueError(f"model mirror folder {v} does not exist")
        return v

    @field_validator("catalog")
    @classmethod
    def _catalog_exists(cls, v: Path | None) -> Path | None:
        if v is not None and not Path(v).is_file():
            raise ValueError(f"catalog file {v} does not exist")
        return v

    @field_validator("detector", "classifier")
    @classmethod
    def _ref(cls, v: str) -> str:
        parse_ref(v)
        return v

    @model_validator(mode="after")
    def _root_usable(self) -> Settings:
        root = self.model_root
        if root.exists() and not root.is_dir():
            raise ValueError(f"model root {root} exists and is not a folder")
        return self


def get_settings(**overrides: object) -> Settings:
    """Read the environment now (never at import time); keyword arguments win over the environment."""
    return Settings(**overrides)  # type: ignore[arg-type]


def settings_table() -> str:
    """The README's table of every `EMOSERVE_*` setting, generated from the model."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        if field.default_factory is not None:
            default = "see meaning" if name == "model_root" else repr(field.default_factory())  # type: ignore[call-arg]
        else:
            default = repr(field.default)
        meaning = field.description or ""
        if name == "model_root":
            meaning += " Default: the user data folder, e.g. `~/.local/share/emoserve/models`."
        rows.append(f"| `EMOSERVE_{name.upper()}` | `{default}` | {meaning} |")
    return "\n".join(rows)


START, END = "<!-- settings:start -->", "<!-- settings:end -->"


def update_readme(path: Path) -> None:
    """Replace the table between the settings markers of `path` with the current one."""
    text = path.read_text(encoding="utf-8")
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    path.write_text(f"{head}{START}\n{settings_table()}\n{END}{tail}", encoding="utf-8")


if __name__ == "__main__":
    import sys

    if len(sys.argv) == 3 and sys.argv[1] == "--write":
        update_readme(Path(sys.argv[2]))
    else:
        print(settings_table())
