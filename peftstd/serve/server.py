"""Start-up checks, uvicorn, and the graceful shutdown: on SIGTERM (or SIGINT) readiness turns false, new requests
get 503, every accepted request is answered, then the process exits 0 (within `drain_timeout_s`)."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

from peftstd.errors import UserError
from peftstd.serve.config import ServeConfig


def model_names(exports: list[str]) -> dict[str, Path]:
    """NAME=PATH, or PATH named after its folder (a run's `export/` folder after the run). PATH is an export folder,
    or a causal-LM or text-classification LoRA run served as an adapter of its base (runs of one base share it in
    memory)."""
    from peftstd.runtime.folders import ExportFolder, RunFolder

    named: dict[str, Path] = {}
    for spec in exports:
        name, _, path = spec.rpartition("=") if "=" in spec else ("", "", spec)
        folder = Path(path)
        if RunFolder.holds(folder) and not ExportFolder.holds(folder):
            from peftstd.runtime.load import adapter_of

            adapter_of(RunFolder(folder))  # one line when the run cannot be served as an adapter
            name = name or folder.absolute().name
        else:
            name = name or ExportFolder(folder).name  # one line when it is no export folder
        if not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise UserError(f"model name {name!r} must be letters, digits, '-', '_' or '.'; name it with NAME=PATH")
        if name in named:
            raise UserError(f"two exports are named {name!r}; name them with NAME=PATH")
        named[name] = folder
    return named


def check_startup(cfg: ServeConfig, exports: dict[str, Path]) -> None:
    """What a user can get wrong, before anything loads: each export has a servable artifact, keys where needed."""
    from peftstd.runtime.choice import choose_artifact
    from peftstd.runtime.folders import ExportFolder

    if not cfg.loopback and cfg.keys is None:
        raise UserError(f"serving on {cfg.host} without --keys would let anyone call the models; "
                        "create keys with `peftstd serve keys add NAME --keys FILE` or serve on 127.0.0.1")
    if cfg.keys is not None:
        from peftstd.serve.keys import read_keys

        if not read_keys(cfg.keys):
            raise UserError(f"key file {str(cfg.keys)!r} holds no keys; add one with `peftstd serve keys add NAME --keys {cfg.keys}`")
    for path in exports.values():
        if ExportFolder.holds(path) and ExportFolder(path).runtime == "llama.cpp":
            raise UserError(f"{str(path)!r} holds GGUF files, which run in llama.cpp, not in peftstd serve: serve them with "
                            "llama.cpp's llama-server or Ollama (the folder's Modelfile); `peftstd predict` runs them")
        if ExportFolder.holds(path):
            choose_artifact(ExportFolder(path), cfg.artifact, cfg.runtime, cfg.threads, spinning=False)  # measured here once, then cached
    if cfg.request_log not in (None, "-"):
        folder = Path(cfg.request_log).absolute().parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise UserError(f"request log {cfg.request_log!r}: folder {str(folder)!r} does not exist or is not writable")
    if cfg.log_inputs and cfg.request_log is None:
        raise UserError("--log-inputs needs --request-log FILE (or - for standard output)")


def default_streams(streams: int | None) -> int:
    """Two batches in flight where there are two cores, so that one stalled thread holds up its own call only (at
    concurrency 32 on the sentiment export, ~1.1-1.2x the requests/s of one 2-thread stream in exploratory runs,
    not in the committed benchmark)."""
    return streams or (2 if (os.cpu_count() or 1) >= 2 else 1)


def server_state(cfg: ServeConfig, exports: dict[str, Path]):
    """The state every protocol's routes share, with the loader of each model (started by the app's lifespan, or
    awaited by a Ray replica before it takes traffic)."""
    from peftstd.runtime.choice import load_predictor
    from peftstd.runtime.classifier_adapters import adapter_predictors
    from peftstd.runtime.folders import ExportFolder, RunFolder
    from peftstd.serve.app import RateLimiter, ServerState
    from peftstd.serve.keys import KeyRing
    from peftstd.serve.requestlog import RequestLog

    # The model threads need the GIL for a moment after each engine call, and the event loop holds it while busy:
    # a thread waiting for it got it only after Python's default 5 ms switch interval. With 0.5 ms, 1.06x the
    # requests/s at concurrency 32 (sentiment export, 2 cores, 8 alternating rounds against the default).
    sys.setswitchinterval(0.0005)

    runs = {name: RunFolder(path) for name, path in exports.items() if RunFolder.holds(path) and not ExportFolder.holds(path)}
    classifier_runs = {name: run for name, run in runs.items() if run.task != "causal-lm"}
    shared: dict = {}  # classification runs' predictors, their bases loaded once, at the first one's turn

    def load(name: str, path: Path):
        if name in classifier_runs:
            if not shared:
                shared.update(adapter_predictors(classifier_runs, cfg.threads))
            return shared[name]
        # No spinning: the model thread shares the cores with the event loop and the tokenizers, and ONNX Runtime's
        # intra-op threads busy-waiting after each call took them (11.3 ms of CPU per request at concurrency 32).
        predictor = load_predictor(path, cfg.artifact, cfg.runtime, cfg.threads, spinning=False, streams=default_streams(cfg.streams))
        if predictor.generative:
            predictor.max_new_tokens, predictor.max_new_tokens_limit = cfg.max_new_tokens, cfg.max_new_tokens_limit
        return predictor

    return ServerState(cfg, exports, load, keyring=KeyRing(cfg.keys) if cfg.keys else None,
                       limiter=RateLimiter(cfg.rate_limit, cfg.rate_burst) if cfg.rate_limit else None,
                       log=RequestLog(cfg.request_log, cfg.log_inputs) if cfg.request_log else None)


def serve(cfg: ServeConfig, exports: dict[str, Path]) -> int:
    import uvicorn

    from peftstd.serve.app import Lifecycle, create_app

    check_startup(cfg, exports)
    state = server_state(cfg, exports)
    app = Lifecycle(create_app(state), state)
    config = uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level=cfg.log_level, access_log=False,
                            ssl_certfile=str(cfg.ssl_certfile) if cfg.ssl_certfile else None,
                            ssl_keyfile=str(cfg.ssl_keyfile) if cfg.ssl_keyfile else None,
                            timeout_graceful_shutdown=max(1, int(cfg.drain_timeout_s)), lifespan="on")
    server = DrainingServer(config, state)
    scheme = "https" if cfg.ssl_certfile else "http"
    print(f"peftstd serve: {scheme}://{cfg.host}:{cfg.port} models: {', '.join(f'{n} ({p})' for n, p in exports.items())}; "
          f"auth {'on (' + str(cfg.keys) + ')' if cfg.keys else 'off (loopback)'}", flush=True)
    server.run()
    return 0 if server.drained else 1


class DrainingServer:
    """uvicorn's server with a drain phase before it stops: its signal handler is replaced, so the first SIGTERM
    starts draining instead of closing the sockets (and the signal is not raised again after the exit)."""

    def __new__(cls, config, state):
        import uvicorn

        class Server(uvicorn.Server):
            drained = True

            def handle_exit(self, sig, frame):
                if state.draining:  # a second signal: stop now
                    self.drained = False
                    self.should_exit = self.force_exit = True
                    return
                state.draining = True
                threading.Thread(target=self.drain, name="drain", daemon=True).start()

            def drain(self):
                limit = time.monotonic() + state.cfg.drain_timeout_s
                while not state.idle() and time.monotonic() < limit:
                    time.sleep(0.02)
                self.drained = state.idle()
                if not self.drained:
                    print("peftstd serve: drain timeout passed with requests still in flight", file=sys.stderr, flush=True)
                self.should_exit = True

        return Server(config)
