"""The registry of known subject models and transcoder releases, and hub transcoder paths.

``registry.yaml`` (packaged next to this module) holds one entry per published release;
:func:`load_registry` reads it into :class:`TranscoderRelease` objects, checked field by field.
``config/presets/*.yaml`` are built from these entries (:meth:`TranscoderRelease.model_config`).

A pretrained transcoder ``path`` in the config is a template with ``{layer}``: a local file or
folder, or a Hugging Face reference ``hf://{org}/{repo}/{path inside the repo}[?revision={rev}]``.
:func:`resolve_transcoder_path` turns it into a local path inside the job that loads the
transcoder (downloading with ``huggingface_hub.hf_hub_download``), never while the DAG is built.
A ``*`` in the path of an ``hf://`` reference stands for one variable part of a file name: the
repository's files are listed and the match whose ``*`` part holds the smallest number is taken
(GemmaScope's lowest ``average_l0_*`` of a layer).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import yaml

from circuit_insights.core.errors import InputError

HF_PREFIX = "hf://"
REGISTRY_FILE = "registry.yaml"
FORMATS = ("native", "dunefsky", "gemmascope", "circuit_tracer")
FAMILIES = ("gpt2", "gemma2", "gemma3", "llama")
ACTIVATIONS = ("relu", "jumprelu", "topk")
INPUT_HOOKS = ("mlp_in", "mlp_in_unaffine", "resid_mid")
OUTPUT_HOOKS = ("mlp_out", "mlp_out_post_norm")
COMPANION_FILES = {"circuit_tracer": ("config.yaml",)}
"""Files fetched next to a downloaded transcoder file when the repository has them, by format
(a circuit-tracer layer file takes its hooks from the ``config.yaml`` beside it)."""

Downloader = Callable[[str, str, "str | None"], str]
"""``(repo_id, filename, revision) -> local path``; raises ``FileNotFoundError`` for a missing file."""
Lister = Callable[[str, "str | None"], list[str]]
"""``(repo_id, revision) -> every file path in the repository``."""


# --- the registry --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TranscoderRelease:
    """One subject model with its published per-layer transcoders."""

    name: str
    """Registry key, e.g. ``gemma-2-2b-gemmascope`` (also the preset's file stem)."""
    model: str
    """Hugging Face id of the subject model, e.g. ``google/gemma-2-2b``."""
    family: str
    """Model family of ``circuit_insights.models.architectures`` (``gpt2``, ``gemma2``, ``gemma3``, ``llama``)."""
    n_layers: int
    d_model: int
    n_features: int
    """Features per layer's transcoder."""
    repo: str
    """Hugging Face repository of the transcoder files."""
    file_pattern: str
    """Path of one layer's file inside ``repo``, with ``{layer}`` (and ``{l0}`` where the name holds
    the layer's L0, taken from ``l0_per_layer``)."""
    format: str
    """Loader of ``circuit_insights.transcoders.formats``."""
    activation: str
    skip: bool
    """Whether the transcoders have a skip connection (``W_skip`` / ``affine_skip_connection``)."""
    input_hook: str
    """Hook the features read (``docs/transcoders.md``)."""
    output_hook: str
    """Hook the transcoders reconstruct."""
    prepend_bos: bool
    """Whether contexts start with the model's BOS token."""
    bos_token_id: int | None
    weightlens_threshold: float
    """Recommended WeightLens token threshold ``t_tok`` (4 for GPT-2, 4.5 for Gemma and Llama)."""
    revision: str | None = None
    """Branch, tag or commit of ``repo`` (None: the default branch)."""
    l0_per_layer: Mapping[int, int] = field(default_factory=dict)
    """Layer -> the L0 in the name of the layer's file (GemmaScope: the lowest-L0 file)."""
    sources: str = ""
    """Where the facts of this entry come from."""

    @property
    def layers(self) -> list[int]:
        """Every layer, ``0 .. n_layers - 1``."""
        return list(range(self.n_layers))

    def file_in_repo(self, layer: int) -> str:
        """The path inside ``repo`` of ``layer``'s transcoder file."""
        if not 0 <= layer < self.n_layers:
            raise InputError(
                f"registry entry {self.name!r}: layer {layer} is out of range "
                f"(layers 0..{self.n_layers - 1})"
            )
        values: dict[str, Any] = {"layer": layer}
        if "{l0}" in self.file_pattern:
            if layer not in self.l0_per_layer:
                raise InputError(f"registry entry {self.name!r}: no l0_per_layer for layer {layer}")
            values["l0"] = self.l0_per_layer[layer]
        return self.file_pattern.format(**values)

    def transcoder_reference(self, layer: int) -> str:
        """The exact ``hf://`` reference of ``layer``'s file."""
        return hf_reference(self.repo, self.file_in_repo(layer), self.revision)

    @property
    def path_template(self) -> str:
        """One ``hf://`` template for every layer (``{layer}`` kept, ``{l0}`` as ``*``)."""
        return hf_reference(self.repo, self.file_pattern.replace("{l0}", "*"), self.revision)

    def model_config(self) -> dict[str, Any]:
        """The config block of this model (``models.<name>``) analysing every layer."""
        return {
            "source": self.model,
            "prepend_bos": self.prepend_bos,
            "layers": self.layers,
            "transcoders": {
                "kind": "pretrained",
                "format": self.format,
                "path": self.path_template,
                "n_features": self.n_features,
                "input_hook": self.input_hook,
                "output_hook": self.output_hook,
            },
        }


_REQUIRED: dict[str, type | tuple[type, ...]] = {
    "model": str,
    "family": str,
    "n_layers": int,
    "d_model": int,
    "n_features": int,
    "repo": str,
    "file_pattern": str,
    "format": str,
    "activation": str,
    "skip": bool,
    "input_hook": str,
    "output_hook": str,
    "prepend_bos": bool,
    "bos_token_id": (int, type(None)),
    "weightlens_threshold": (int, float),
}
_OPTIONAL: dict[str, type | tuple[type, ...]] = {
    "revision": (str, type(None)),
    "l0_per_layer": dict,
    "sources": str,
}
_CHOICES = {
    "format": FORMATS,
    "family": FAMILIES,
    "activation": ACTIVATIONS,
    "input_hook": INPUT_HOOKS,
    "output_hook": OUTPUT_HOOKS,
}


def release_from_mapping(name: str, raw: Any, source: str = REGISTRY_FILE) -> TranscoderRelease:
    """Check one registry entry and build its :class:`TranscoderRelease`.

    Raises :class:`InputError` naming the entry and the field at fault.
    """
    where = f"{source}: entry {name!r}"
    if not isinstance(raw, Mapping):
        raise InputError(f"{where} is not a mapping")
    unknown = sorted(set(raw) - set(_REQUIRED) - set(_OPTIONAL))
    if unknown:
        raise InputError(f"{where}: unknown field(s) {', '.join(unknown)}")
    for key, kind in {**_REQUIRED, **_OPTIONAL}.items():
        if key not in raw:
            if key in _REQUIRED:
                raise InputError(f"{where}: field {key!r} is missing")
            continue
        value = raw[key]
        bad_bool = isinstance(value, bool) and kind in (int, (int, float), (int, type(None)))
        if not isinstance(value, kind) or bad_bool:
            raise InputError(f"{where}: field {key!r} has the wrong type ({value!r})")
    for key, choices in _CHOICES.items():
        if raw[key] not in choices:
            raise InputError(f"{where}: field {key!r} is {raw[key]!r}, not one of {choices}")
    for key in ("n_layers", "d_model", "n_features"):
        if raw[key] < 1:
            raise InputError(f"{where}: field {key!r} must be positive, got {raw[key]}")
    if "{layer}" not in raw["file_pattern"]:
        raise InputError(f"{where}: field 'file_pattern' has no {{layer}}")
    l0_per_layer = {int(layer): int(l0) for layer, l0 in (raw.get("l0_per_layer") or {}).items()}
    if "{l0}" in raw["file_pattern"] and sorted(l0_per_layer) != list(range(raw["n_layers"])):
        raise InputError(
            f"{where}: field 'l0_per_layer' must give an L0 for each of the {raw['n_layers']} "
            "layers when file_pattern holds {l0}"
        )
    if raw["repo"].count("/") != 1:
        raise InputError(f"{where}: field 'repo' is not of the form org/name: {raw['repo']!r}")
    return TranscoderRelease(
        name=name,
        model=raw["model"],
        family=raw["family"],
        n_layers=raw["n_layers"],
        d_model=raw["d_model"],
        n_features=raw["n_features"],
        repo=raw["repo"],
        file_pattern=raw["file_pattern"],
        format=raw["format"],
        activation=raw["activation"],
        skip=raw["skip"],
        input_hook=raw["input_hook"],
        output_hook=raw["output_hook"],
        prepend_bos=raw["prepend_bos"],
        bos_token_id=raw["bos_token_id"],
        weightlens_threshold=float(raw["weightlens_threshold"]),
        revision=raw.get("revision"),
        l0_per_layer=l0_per_layer,
        sources=" ".join(str(raw.get("sources", "")).split()),
    )


def load_registry(path: str | Path | None = None) -> dict[str, TranscoderRelease]:
    """Every entry of the registry (the packaged ``registry.yaml`` unless ``path`` is given)."""
    if path is None:
        return dict(_packaged_registry())
    return _read_registry(Path(path).read_text(), str(path))


@cache
def _packaged_registry() -> dict[str, TranscoderRelease]:
    text = resources.files("circuit_insights.transcoders").joinpath(REGISTRY_FILE).read_text()
    return _read_registry(text, REGISTRY_FILE)


def _read_registry(text: str, source: str) -> dict[str, TranscoderRelease]:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise InputError(f"{source}: not valid YAML ({error})") from error
    if not isinstance(raw, Mapping) or not raw:
        raise InputError(f"{source}: expected a mapping of registry entries")
    return {
        str(name): release_from_mapping(str(name), entry, source) for name, entry in raw.items()
    }


def release_for_path(path_template: str) -> TranscoderRelease | None:
    """The registry entry whose transcoder files ``path_template`` names, else None.

    An entry matches when the ``hf://`` template has its repository, revision and file pattern
    (``{l0}`` written ``*``), i.e. equals :attr:`TranscoderRelease.path_template`, as the presets
    write it. Local paths match no entry.
    """
    if not is_hf_reference(path_template):
        return None
    for release in load_registry().values():
        if release.path_template == path_template:
            return release
    return None


def fallback_hooks(transcoder_settings: Mapping[str, Any]) -> tuple[str, str] | None:
    """Hooks for a pretrained file that names none itself (``models.<name>.transcoders`` block).

    The registry entry of the configured ``path`` first (:func:`release_for_path`), else the
    configured ``input_hook`` / ``output_hook`` when both are set, else None. The pinned mntss
    Llama-3.2-1B release has no ``config.yaml`` beside its layer files (circuit-tracer kept that
    config in its own package), so its hooks come from here.
    """
    release = release_for_path(str(transcoder_settings.get("path") or ""))
    if release is not None:
        return release.input_hook, release.output_hook
    configured = (transcoder_settings.get("input_hook"), transcoder_settings.get("output_hook"))
    if all(configured):
        return str(configured[0]), str(configured[1])
    return None


def get_release(name: str) -> TranscoderRelease:
    """The registry entry ``name``; the error lists the known ones."""
    registry = load_registry()
    if name not in registry:
        raise InputError(f"unknown registry entry {name!r} (known: {', '.join(registry)})")
    return registry[name]


# --- hf:// references ----------------------------------------------------------------------------


@dataclass(frozen=True)
class HubReference:
    """A file (or file pattern) inside a Hugging Face repository."""

    repo_id: str
    path: str
    revision: str | None = None


def hf_reference(repo_id: str, path: str, revision: str | None = None) -> str:
    """``hf://{repo_id}/{path}[?revision={revision}]`` (circuit-tracer's spelling)."""
    reference = f"{HF_PREFIX}{repo_id}/{path}"
    return f"{reference}?revision={revision}" if revision else reference


def is_hf_reference(path: str) -> bool:
    """Whether a configured path names a file on the Hugging Face hub."""
    return path.startswith(HF_PREFIX)


def parse_hf_reference(reference: str) -> HubReference:
    """Split ``hf://org/repo/path/in/repo?revision=r`` into its parts."""
    if not is_hf_reference(reference):
        raise InputError(f"transcoder path {reference!r} does not start with {HF_PREFIX}")
    body, _, query = reference[len(HF_PREFIX) :].partition("?")
    parts = body.split("/")
    if len(parts) < 3 or not all(parts):
        raise InputError(
            f"transcoder path {reference!r} is not of the form "
            f"{HF_PREFIX}org/repo/path/in/repo[?revision=r]"
        )
    revision = None
    if query:
        options = parse_qs(query, keep_blank_values=True)
        unknown = sorted(set(options) - {"revision"})
        if unknown or len(options.get("revision", [])) > 1:
            raise InputError(
                f"transcoder path {reference!r}: only one '?revision=' option is understood"
            )
        revision = options["revision"][0] or None
    return HubReference("/".join(parts[:2]), "/".join(parts[2:]), revision)


def _hub_download(repo_id: str, filename: str, revision: str | None) -> str:
    """``hf_hub_download`` (cache and offline mode as huggingface_hub configures them)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    try:
        return str(hf_hub_download(repo_id, filename, revision=revision))
    except (EntryNotFoundError, LocalEntryNotFoundError) as error:
        raise FileNotFoundError(f"{repo_id}/{filename}: {error}") from error


def _hub_list_files(repo_id: str, revision: str | None) -> list[str]:
    """The repository's files; offline, the files of its cached snapshot."""
    from huggingface_hub import HfApi, snapshot_download

    try:
        return list(HfApi().list_repo_files(repo_id, revision=revision))
    except Exception as online_error:  # noqa: BLE001 - offline or unreachable: try the cache
        try:
            folder = Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
        except Exception:  # noqa: BLE001 - report the online failure, it says more
            raise InputError(
                f"cannot list the files of {repo_id} (revision {revision or 'main'}): "
                f"{online_error}"
            ) from online_error
        return [str(file.relative_to(folder)) for file in folder.rglob("*") if file.is_file()]


def lowest_numbered_match(pattern: str, files: Sequence[str]) -> str | None:
    """The file matching ``pattern`` (``*`` = any characters but ``/``) whose first ``*`` part
    holds the smallest number; None when nothing matches. Ties and non-numbers sort by name."""
    regex = re.compile(
        "".join(
            "([^/]*)" if part == "*" else re.escape(part) for part in re.split(r"(\*)", pattern)
        )
        + r"\Z"
    )

    def key(match: re.Match[str]) -> tuple[float, str]:
        number = re.search(r"\d+(?:\.\d+)?", match.group(1)) if match.groups() else None
        return (float(number.group()) if number else float("inf"), match.group(0))

    matches = [m for m in (regex.match(file) for file in files) if m is not None]
    return min(matches, key=key).group(0) if matches else None


def resolve_transcoder_path(
    path_template: str,
    layer: int,
    *,
    fmt: str | None = None,
    download: Downloader | None = None,
    list_files: Lister | None = None,
) -> Path:
    """The local path of ``layer``'s transcoder configured as ``path_template``.

    Local templates are only formatted (``{layer}``), never checked here: the loader names a
    missing file. ``hf://`` references are downloaded into the Hugging Face cache (a ``*`` in the
    path picks the lowest-numbered match among the repository's files); for ``fmt``
    ``circuit_tracer`` a ``config.yaml`` beside the file is fetched too when the repository has
    one. Call it inside the job that loads the transcoder, never while the DAG is built.

    ``download`` / ``list_files`` replace the hub calls (tests).
    """
    try:
        formatted = path_template.format(layer=layer)
    except (KeyError, IndexError, ValueError) as error:
        raise InputError(
            f"transcoder path {path_template!r}: only {{layer}} may stand in braces ({error})"
        ) from error
    if not is_hf_reference(formatted):
        return Path(formatted).expanduser()
    download = download or _hub_download
    reference = parse_hf_reference(formatted)
    filename = reference.path
    if "*" in filename:
        files = (list_files or _hub_list_files)(reference.repo_id, reference.revision)
        chosen = lowest_numbered_match(filename, files)
        if chosen is None:
            raise InputError(
                f"transcoder path {path_template!r}, layer {layer}: no file of "
                f"{reference.repo_id} matches {filename!r}"
            )
        filename = chosen
    try:
        local = Path(download(reference.repo_id, filename, reference.revision))
    except FileNotFoundError as error:
        raise InputError(
            f"transcoder path {path_template!r}, layer {layer}: {reference.repo_id} has no file "
            f"{filename!r} (revision {reference.revision or 'main'})"
        ) from error
    folder = str(Path(filename).parent)
    for companion in COMPANION_FILES.get(fmt or "", ()):
        in_repo = companion if folder in ("", ".") else f"{folder}/{companion}"
        try:
            download(reference.repo_id, in_repo, reference.revision)
        except FileNotFoundError:
            pass  # optional: the loader says what it lacks without it
    return local
