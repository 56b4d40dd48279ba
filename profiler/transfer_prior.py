"""A known device's saved predictor as `jcw profile --prior` sees it: its identity (SHA-256 over its card and
listed files) and the checks made before a profile is planned for transfer from it.

The profiler knows nothing of models, so it reads only the predictor's card.json as JSON: a jcw predictor
card whose listed files exist and match their hashes, trained with the device's runner series. `jcw train
--prior` (predictor.transfer) loads the predictor and checks the rest (feature schema, model files).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

CARD = "card.json"
PREDICTOR_FORMAT = "jcw-predictor"
_MAX_CARD_BYTES = 16 * 1024 * 1024


class PriorCardError(ValueError):
    """A --prior that cannot be used; one sentence."""


def runner_series(version: Any) -> str:
    """'0.2.3' → '0.2': runners of one series measure alike."""
    return ".".join(str(version).split(".")[:2])


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_card(directory: str | Path) -> dict[str, Any]:
    """The card of a saved predictor, or PriorCardError saying why the directory is not one."""
    directory = Path(directory)
    if not directory.is_dir():
        raise PriorCardError(f"--prior {directory}: no such predictor directory; train one with `jcw train`")
    path = directory / CARD
    try:
        if path.stat().st_size > _MAX_CARD_BYTES:
            raise PriorCardError(f"--prior {directory}: its {CARD} is implausibly large")
        card = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PriorCardError(f"--prior {directory} is not a saved predictor (no {CARD}); train one with "
                             "`jcw train`") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise PriorCardError(f"--prior {directory}: its {CARD} is unreadable ({type(exc).__name__})") from None
    if not isinstance(card, dict) or card.get("format") != PREDICTOR_FORMAT:
        raise PriorCardError(f"--prior {directory} is not a jcw predictor (its {CARD} is not a predictor card)")
    return card


def predictor_sha256(directory: str | Path, card: dict[str, Any] | None = None) -> str:
    """SHA-256 over a saved predictor's card and every file its card lists, each as its name and its
    content's hash; each listed file must match the hash the card gives it (else it was tampered with)."""
    directory = Path(directory)
    card = read_card(directory) if card is None else card
    files = card.get("files")
    if not isinstance(files, dict) or not files or not all(
            isinstance(name, str) and name and "/" not in name and "\\" not in name and name not in (".", "..")
            and isinstance(expected, str) for name, expected in files.items()):
        raise PriorCardError(f"--prior {directory}: its {CARD} does not list its model files")
    digest = hashlib.sha256()
    for name in sorted({CARD, *files}):
        path = directory / name
        if not path.is_file():
            raise PriorCardError(f"--prior {directory} lacks its file {name}")
        actual = _sha256(path)
        if name != CARD and actual != files[name]:
            raise PriorCardError(f"--prior {directory}: its file {name} does not match the hash in its card; it was "
                                 "modified or damaged, so it is refused")
        digest.update(f"{name}\0{actual}\n".encode())
    return digest.hexdigest()


def check_prior(directory: str | Path) -> dict[str, Any]:
    """{"path", "sha256", "runner_version"} of a usable --prior, before anything connects (PriorCardError
    otherwise)."""
    card = read_card(directory)
    runner = card.get("runner")
    version = runner.get("version") if isinstance(runner, dict) else None
    if version is None:
        raise PriorCardError(f"--prior {directory}: its card names no runner version")
    return {"path": str(directory), "sha256": predictor_sha256(directory, card), "runner_version": str(version)}


def check_runner(prior: dict[str, Any], device_runner: dict[str, Any]) -> None:
    """PriorCardError unless the prior was measured with the device's runner series."""
    device_version = device_runner.get("version")
    if runner_series(prior["runner_version"]) != runner_series(device_version):
        raise PriorCardError(f"--prior {prior['path']} was trained on runner {prior['runner_version']} and this "
                             f"device runs runner {device_version}; their latencies are not comparable, so choose "
                             "a prior measured with the same runner series")
