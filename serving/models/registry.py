"""The registry: every model version the server knows, its state, and which one a request gets.

Loads the repository (every model in parallel; serving.models.loader opens each version), reloads
and unloads on request, drains, and reports per-model state: a model that fails to load is
UNAVAILABLE with its reason while the others serve.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from contract.names import DEFAULT_PARAMETER, HELPER_TASKS
from serving import repository
from serving.backends import BackendSettings
from serving.errors import NotFound, NotReady, Unavailable
from serving.models.loader import Loader
from serving.models.served import ModelState, ServedModel
from serving.placement import Gpu
from serving.repository import ConfigError, ModelSource

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RepositoryEntry:
    """One row of the repository index: a model version known on disk, and its state."""

    name: str
    version: int | None  # None = a model folder that is not loaded
    state: ModelState
    reason: str


Listener = Callable[[], None]


class ModelManager:
    """Every model version the server knows, keyed by name and version.

    Call `load_all()` (or `load(name)`) from the event loop that will serve requests. State
    changes notify listeners (health, metrics) on that loop. `startup_models` (None = every folder)
    limits what `load_all` loads: model control's explicit mode sets it from --load-model.
    `strict_readiness` (--strict-readiness) says what `serving` requires: every model, or some.
    """

    def __init__(
        self,
        repository_path: Path,
        settings: BackendSettings | None = None,
        gpus: Sequence[Gpu] = (),
        gpu_capable: bool | None = None,
        strict_readiness: bool = True,
    ) -> None:
        self.repository = repository_path
        self.strict_readiness = strict_readiness
        self._loader = Loader(settings or BackendSettings(), gpus, gpu_capable)
        self._models: dict[str, dict[int, ServedModel]] = {}
        self._errors: dict[str, str] = {}  # model folders that failed before any version existed
        self._listeners: list[Listener] = []
        self.loaded = False
        self.draining = False
        self.startup_models: frozenset[str] | None = None
        #: How model files are read; model control's explicit mode confines them to the repository.
        self.files = repository.UNCONFINED

    # ------------------------------------------------------------------ queries
    def get(self, name: str, version: int = 0) -> ServedModel:
        """The model `name` at `version` (0 = the newest READY version).

        Raises NotFound (no such model/version), NotReady (it exists but cannot serve), Unavailable (draining).
        """
        self._refuse_when_draining()
        versions = self._models.get(name)
        if not versions:
            if name in self._errors:
                raise NotReady(f"model '{name}' failed to load: {self._errors[name]}")
            if self._on_disk(name):  # Triton: a known but unloaded model is UNAVAILABLE, not unknown
                raise NotReady(f"model '{name}' is in the repository but not loaded; load it (RepositoryModelLoad)")
            raise NotFound(f"model '{name}' is not in the repository; ListModels shows what is served")
        if version:
            model = versions.get(version)
            if model is None:
                raise NotFound(f"model '{name}' has no version {version} (served: {sorted(versions)})")
        else:
            ready = [m for v, m in sorted(versions.items()) if m.ready]
            model = ready[-1] if ready else versions[max(versions)]
        if not model.ready:
            detail = f": {model.reason}" if model.reason else f" ({model.state.value})"
            raise NotReady(f"model '{name}' version {model.version} is not ready{detail}")
        return model

    def _on_disk(self, name: str) -> bool:
        """Whether the repository holds a model folder `name` (looked up only for names not loaded)."""
        return any(source.name == name for source in repository.discover(self.repository))

    def default_for(self, task: str) -> ServedModel:
        """The model a request without a name gets for `task`.

        The newest version of: a model whose parameter `default` is "true", else the first by name;
        ready models first. Raises NotFound when no model serves the task, NotReady when none is ready.
        """
        self._refuse_when_draining()
        candidate = self._default_name(task)
        if candidate is None:
            raise NotFound(f"no model in the repository serves task '{task}'")
        return self.get(candidate)

    def is_default(self, model: ServedModel) -> bool:
        return bool(model.task) and self._default_name(model.task) == model.name

    def _default_name(self, task: str) -> str | None:
        if task in HELPER_TASKS:
            return None
        names = sorted(
            (name for name, versions in self._models.items() if versions[max(versions)].task == task),
            key=lambda name: (
                not any(m.ready for m in self._models[name].values()),
                self._models[name][max(self._models[name])].parameters.get(DEFAULT_PARAMETER, "").lower() != "true",
                name,
            ),
        )
        return names[0] if names else None

    def models(self) -> list[ServedModel]:
        """Every model version that was loaded or tried, by name then version."""
        # One snapshot of the dict: /metrics calls this from its own thread while the loop loads/unloads.
        return [model for _, versions in sorted(self._models.items()) for _, model in sorted(versions.items())]

    def tasks(self) -> list[str]:
        """The tasks some model of the repository serves (HELPER_TASKS excluded), sorted."""
        return sorted({m.task for m in self.models() if m.task and m.task not in HELPER_TASKS})

    def index(self) -> list[RepositoryEntry]:
        """Every model folder on disk with the state of each version (for RepositoryIndex)."""
        entries = []
        for source in repository.discover(self.repository):
            versions = self._models.get(source.name)
            if versions:
                entries += [RepositoryEntry(m.name, v, m.state, m.reason) for v, m in sorted(versions.items())]
            else:
                reason = self._errors.get(source.name, "not loaded")
                entries.append(RepositoryEntry(source.name, None, ModelState.UNAVAILABLE, reason))
        return entries

    def unready(self) -> list[str]:
        """What is loaded or tried but cannot serve: "name" of a folder that failed before any version
        existed, "name:version" of a version that is loading, failed or unloading; sorted."""
        failed = list(self._errors)  # one snapshot: /metrics may call this from its thread
        return sorted([*failed, *(f"{m.name}:{m.version}" for m in self.models() if not m.ready)])

    @property
    def serving(self) -> bool:
        """The whole server can answer (health service "", v2 ServerReady): the initial load finished,
        not draining, and with `strict_readiness` (Triton's default) every model the server loaded or
        tried is ready, without it some model is. A server asked to load nothing at start (explicit
        model control, no --load-model) is ready with no model."""
        if not self.loaded or self.draining:
            return False
        models = self.models()
        nothing_asked = self.startup_models == frozenset()
        if self.strict_readiness:
            return (bool(models) or nothing_asked) and not self.unready()
        return nothing_asked or any(m.ready for m in models)

    def add_listener(self, listener: Listener) -> None:
        """Call `listener()` on the event loop after any model changes state."""
        self._listeners.append(listener)

    # ------------------------------------------------------------------ lifecycle
    async def load_all(self) -> None:
        """Load every model of the repository (or the `startup_models` of it) in parallel; never raises
        for one bad model."""
        sources = repository.discover(self.repository)
        if self.startup_models is not None:
            sources = [source for source in sources if source.name in self.startup_models]
        await asyncio.gather(*(self._load_source(source) for source in sources))
        self.loaded = True
        self._notify()

    async def load(self, name: str) -> None:
        """(Re)load one model folder by name; the previous versions keep serving until the new ones are ready.

        Raises NotFound when the repository has no such folder. A load failure is reported as the
        model's state (and raised as NotReady so a control RPC can say why).
        """
        source = next((s for s in repository.discover(self.repository) if s.name == name), None)
        if source is None:
            raise NotFound(f"the repository has no model folder named '{name}'")
        await self._load_source(source)
        self._notify()
        self.get(name)  # raises NotReady with the reason when nothing of it is ready

    async def unload(self, name: str) -> None:
        """Stop serving `name`: refuse new requests, finish running batches, release the sessions."""
        versions = self._models.pop(name, None)
        failed = self._errors.pop(name, None)
        if versions is None:
            if failed is None:
                raise NotFound(f"model '{name}' is not loaded")
            self._notify()
            return
        for model in versions.values():
            model.state = ModelState.UNLOADING
        self._notify()
        await asyncio.gather(*(model._close() for model in versions.values()))

    async def close(self) -> None:
        """Unload everything (after a drain)."""
        self._loader.close()
        for name in list(self._models):
            await self.unload(name)

    def begin_drain(self) -> None:
        """From now on get()/default_for() raise Unavailable; running requests finish."""
        self.draining = True
        self._notify()

    # ------------------------------------------------------------------ loading internals
    def _refuse_when_draining(self) -> None:
        if self.draining:
            raise Unavailable("the server is shutting down; retry on another replica")

    async def _load_source(self, source: ModelSource) -> None:
        """Load every served version of one folder; on a reload the old versions serve until the new
        ones are ready, and stay when none of the new ones is (as Triton does)."""
        try:
            config = repository.read_config(source, self.files)
            spec = repository.model_spec(source, config, self.files)
            versions = repository.served_versions(source, config)
        except ConfigError as error:
            log.error("model %s cannot load: %s", source.name, error)
            if source.name not in self._models:
                self._errors[source.name] = str(error)
                return
            raise NotReady(
                f"model '{source.name}' could not be reloaded ({error}); the loaded versions keep serving"
            ) from None
        fresh = {version: ServedModel(source, spec, version, self.files) for version in versions}
        previous = self._models.get(source.name)
        if previous is None:
            self._errors.pop(source.name, None)
            self._models[source.name] = fresh
        await asyncio.gather(*(self._loader.load(model) for model in fresh.values()))
        if previous is None:
            return
        if any(model.ready for model in fresh.values()):
            self._models[source.name] = fresh
            await asyncio.gather(*(model._close() for model in previous.values()))
        else:
            log.error("model %s: the reload failed; the loaded versions keep serving", source.name)
            reasons = "; ".join(m.reason for m in fresh.values() if m.reason)  # before _close() overwrites them
            await asyncio.gather(*(model._close() for model in fresh.values()))
            raise NotReady(f"model '{source.name}' could not be reloaded ({reasons}); the loaded versions keep serving")

    def _notify(self) -> None:
        for listener in self._listeners:
            listener()
