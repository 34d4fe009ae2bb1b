"""Model control (Triton's `--model-control-mode explicit`): who may load or unload a model, and from where.

Two gates, both checked before the repository is touched:
- who: a bearer token fixed at start-up; a request without `authorization: Bearer <token>` is
  Unauthenticated. Explicit mode without a token refuses to start (see `ModelControl.create`).
- what: a model name is one plain folder name directly inside the repository; the folder and every
  file under it must resolve (symlinks followed) inside the repository, so neither `../x` nor a
  symlink can make the server read files elsewhere.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from serving.errors import InvalidArgument, NotFound, Unauthenticated

MODES = ("none", "explicit")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")


@dataclass(frozen=True)
class ModelControl:
    """Whether load/unload is allowed, the token that authorises it, the repository root, and which
    models to load at start (None = all; explicit mode loads only those named by --load-model)."""

    mode: str
    token: str
    repository: Path
    startup_models: frozenset[str] | None = None

    @classmethod
    def create(cls, mode: str, token: str, repository: Path, load_models: str = "") -> ModelControl:
        """Validate the start-up settings; raises ValueError with a message fit for the command line.

        load_models: --load-model, comma-separated names or "*" (every model); explicit mode only.
        """
        if mode not in MODES:
            raise ValueError(f"--model-control-mode must be one of {', '.join(MODES)}, got {mode!r}")
        names = frozenset(name.strip() for name in load_models.split(",") if name.strip())
        if mode != "explicit":
            if names:
                raise ValueError("--load-model needs --model-control-mode explicit (otherwise every model loads)")
            return cls(mode, token, repository.resolve())
        if len(token) < 16:
            raise ValueError(
                "--model-control-mode explicit needs a bearer token of at least 16 characters "
                "(set NINEFOLD_MODEL_CONTROL_TOKEN)"
            )
        if "*" in names:
            return cls(mode, token, repository.resolve())
        control = cls(mode, token, repository.resolve(), names)
        for name in sorted(names):
            try:
                control.model_folder(name)  # the same name and containment checks as a load request
            except (InvalidArgument, NotFound) as error:
                raise ValueError(f"--load-model: {error}") from None
        return control

    @property
    def enabled(self) -> bool:
        return self.mode == "explicit"

    def authorise(self, metadata: Iterable[tuple[str, str | bytes]]) -> None:
        """Raise Unauthenticated unless model control is enabled and `metadata` carries the token."""
        if not self.enabled:
            raise Unauthenticated(
                "model control is disabled; start the server with --model-control-mode explicit and a token"
            )
        presented = ""
        for key, value in metadata:
            if key.lower() == "authorization":
                text = value.decode(errors="replace") if isinstance(value, bytes) else value
                scheme, _, presented = text.strip().partition(" ")
                presented = presented.strip() if scheme.lower() == "bearer" else ""
        if not presented or not hmac.compare_digest(presented.encode(), self.token.encode()):
            raise Unauthenticated(
                "model control needs the header 'authorization: Bearer <token>' with the server's token"
            )

    @staticmethod
    def check_name(name: str) -> None:
        """Raise InvalidArgument unless `name` is a plain folder name (no separators, no dot names)."""
        if not _NAME.fullmatch(name):
            raise InvalidArgument(
                f"model name {name!r} is not a plain folder name (letters, digits, '_', '-', '.'; up to 128)"
            )

    def model_folder(self, name: str) -> Path:
        """The folder of model `name` inside the repository, after the name and containment checks."""
        self.check_name(name)
        folder = self.repository / name
        if not folder.is_dir():
            raise NotFound(f"no model folder '{name}' in the model repository")
        for path in (folder, *folder.rglob("*")):
            if not path.resolve().is_relative_to(self.repository):
                raise InvalidArgument(f"model '{name}' refers to files outside the model repository; refused")
        return folder
