"""How other tools name one configured model's transcoder set, and the checks every import shares.

The names follow the publishers (docs/formats.md):

- ``model``: the model as circuit-tracer's graph metadata (``metadata.scan``, and the part before
  ``/`` of each ``metadata.transcoder_list`` entry: the Hugging Face name without its owner) and
  Neuronpedia (its model id, ``modelId``) name it, e.g. ``gemma-2-2b``.
- ``source_set``: the transcoder set's Neuronpedia source set, e.g.
  ``gemmascope-transcoder-16k``. The transcoder of layer ``L`` is the source ``f"{L}-{source_set}"``
  (Neuronpedia's source id, ``Explanation.layer``), and the default circuit-tracer transcoder id.
- ``delphi_module``: the module delphi names the layer's latents by (``{module}_latent{index}``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from circuit_insights.core.errors import InputError


@dataclass(frozen=True)
class TranscoderSet:
    """One configured model's transcoder set, as graph files and explanation exports name it."""

    model: str
    """The model's id in other tools: circuit-tracer's ``metadata.scan`` (or the prefix of its
    ``transcoder_list`` ids), Neuronpedia's ``modelId``."""
    source_set: str
    """The transcoders' Neuronpedia source set; layer ``L`` is source ``f"{L}-{source_set}"``."""
    layers: tuple[int, ...]
    """The configured layers (the only ones an import may name)."""
    width: int
    """Features per transcoder: every feature index is in ``[0, width)``."""
    model_aliases: tuple[str, ...] = ()
    """Other names of the model accepted on import (e.g. the Hugging Face id)."""
    preset_scans: tuple[str, ...] = ()
    """circuit-tracer preset scans that name this model and transcoder set at once (its
    ``gemma`` preset writes ``scan: gemma-2-2b`` and no transcoder list)."""
    transcoder_ids: Mapping[int, str] = field(default_factory=dict)
    """circuit-tracer transcoder ids per layer (``transcoder_list`` entries after ``model/``);
    a layer not given is ``f"{layer}-{source_set}"``."""
    delphi_module: str = "layers.{layer}.mlp"
    """delphi's module of a layer (``{layer}`` stands for the index), as in its README's
    ``--hookpoints layers.5.mlp``."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(int(layer) for layer in self.layers))
        if not self.model or "/" in self.model:
            raise InputError(f"transcoder set: model {self.model!r} must be a name without '/'")
        if not self.source_set or "__" in self.source_set:
            raise InputError(f"transcoder set: source_set {self.source_set!r} is not a source set")
        if not self.layers or len(set(self.layers)) != len(self.layers):
            raise InputError(f"transcoder set: layers {list(self.layers)} must be distinct")
        if min(self.layers) < 0:
            raise InputError(f"transcoder set: layers {list(self.layers)} must be >= 0")
        if self.width < 1:
            raise InputError(f"transcoder set: width {self.width} must be >= 1")
        if "{layer}" not in self.delphi_module:
            raise InputError(
                f"transcoder set: delphi_module {self.delphi_module!r} lacks '{{layer}}'"
            )
        unknown = sorted(set(self.transcoder_ids) - set(self.layers))
        if unknown:
            raise InputError(f"transcoder set: transcoder_ids name unconfigured layers {unknown}")

    @property
    def model_names(self) -> tuple[str, ...]:
        """Every name the model is accepted by: ``model``, its aliases, the preset scans."""
        return (self.model, *self.model_aliases, *self.preset_scans)

    def source_id(self, layer: int) -> str:
        """Neuronpedia's source id of ``layer``'s transcoder: ``f"{layer}-{source_set}"``."""
        return f"{layer}-{self.source_set}"

    @property
    def source_ids(self) -> dict[str, int]:
        """The explicit table source id -> layer, one entry per configured layer."""
        return {self.source_id(layer): layer for layer in self.layers}

    def transcoder_id(self, layer: int) -> str:
        """circuit-tracer's id of ``layer``'s transcoder (the ``transcoder_list`` entry after
        ``model/``)."""
        return self.transcoder_ids.get(layer, self.source_id(layer))

    def module(self, layer: int) -> str:
        """delphi's module name of ``layer``."""
        return self.delphi_module.replace("{layer}", str(layer))

    @property
    def modules(self) -> dict[str, int]:
        """The explicit table delphi module -> layer, one entry per configured layer."""
        return {self.module(layer): layer for layer in self.layers}

    def check_layer(self, layer: int, where: str) -> None:
        """Raise :class:`InputError` (prefixed with ``where``) unless ``layer`` is configured."""
        if layer not in self.layers:
            raise InputError(
                f"{where}: layer {layer} is not a configured layer "
                f"(configured: {', '.join(map(str, sorted(self.layers)))})"
            )

    def check_feature(self, layer: int, feature: int, where: str) -> None:
        """Raise :class:`InputError` unless ``layer`` is configured and ``0 <= feature < width``."""
        self.check_layer(layer, where)
        if not 0 <= feature < self.width:
            raise InputError(
                f"{where}: feature {feature} of layer {layer} is outside the transcoder's "
                f"width {self.width} (valid: 0-{self.width - 1})"
            )
