"""The registry of models and transcoder releases, and hf:// transcoder paths (no network: a fake
hub serves files the tests write in each release's real format)."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import numpy as np
import pytest
import yaml
from safetensors.numpy import save_file

from circuit_insights.core.errors import InputError
from circuit_insights.models.architectures import Family
from circuit_insights.transcoders import registry
from circuit_insights.transcoders.base import ACTIVATIONS, INPUT_HOOKS, OUTPUT_HOOKS
from circuit_insights.transcoders.formats import load_transcoder
from circuit_insights.transcoders.formats.common import FORMATS
from circuit_insights.transcoders.registry import (
    lowest_numbered_match,
    parse_hf_reference,
    resolve_transcoder_path,
)
from circuit_insights.weightlens.config import thresholds_for
from tests.test_transcoder_formats import (
    D_MODEL,
    D_SAE,
    dunefsky_arrays,
    gemma_scope_2_arrays,
    gemmascope_arrays,
    skip_transcoder_arrays,
    write_dunefsky,
)

RELEASES = registry.load_registry()


class FakeHub:
    """Repositories as folders ``root/{org}/{repo}/{revision or main}/``; records every call."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.downloads: list[tuple[str, str, str | None]] = []
        self.listings: list[tuple[str, str | None]] = []

    def folder(self, repo_id: str, revision: str | None = None) -> Path:
        return self.root / repo_id / (revision or "main")

    def add(self, repo_id: str, filename: str, revision: str | None = None) -> Path:
        path = self.folder(repo_id, revision) / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def download(self, repo_id: str, filename: str, revision: str | None) -> str:
        self.downloads.append((repo_id, filename, revision))
        path = self.folder(repo_id, revision) / filename
        if not path.is_file():
            raise FileNotFoundError(path)
        return str(path)

    def list_files(self, repo_id: str, revision: str | None) -> list[str]:
        self.listings.append((repo_id, revision))
        folder = self.folder(repo_id, revision)
        return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


@pytest.fixture
def hub(tmp_path) -> FakeHub:
    return FakeHub(tmp_path / "hub")


# --- the entries ---------------------------------------------------------------------------------


def test_the_papers_releases_are_known() -> None:
    gpt2 = RELEASES["gpt2-dunefsky"]
    assert (gpt2.repo, gpt2.format, gpt2.n_features, gpt2.n_layers) == (
        "pchlenski/gpt2-transcoders",
        "dunefsky",
        24576,
        12,
    )
    assert (gpt2.input_hook, gpt2.output_hook) == ("mlp_in_unaffine", "mlp_out")
    assert gpt2.prepend_bos and gpt2.bos_token_id == 50256  # trained with BOS (issue 13)

    gemma2 = RELEASES["gemma-2-2b-gemmascope"]
    assert (gemma2.repo, gemma2.format, gemma2.n_features, gemma2.n_layers) == (
        "google/gemma-scope-2b-pt-transcoders",
        "gemmascope",
        16384,
        26,
    )
    assert gemma2.prepend_bos and gemma2.bos_token_id == 2
    assert gemma2.file_in_repo(0) == "layer_0/width_16k/average_l0_76/params.npz"

    llama = RELEASES["llama-3.2-1b-skip"]
    assert (llama.repo, llama.format, llama.n_features, llama.n_layers) == (
        "mntss/skip-transcoder-Llama-3.2-1B-131k-nobos",
        "circuit_tracer",
        131072,
        16,
    )
    assert llama.skip and llama.revision == "new-training"

    gemma3 = RELEASES["gemma-3-1b-gemmascope2"]
    assert gemma3.family == "gemma3" and gemma3.repo.startswith("google/gemma-scope-2-")
    assert gemma3.format == "circuit_tracer" and gemma3.activation == "jumprelu"


def test_choices_agree_with_the_library() -> None:
    assert set(registry.FORMATS) == set(FORMATS)
    assert set(registry.FAMILIES) == set(get_args(Family))
    assert set(registry.ACTIVATIONS) == set(ACTIVATIONS)
    assert set(registry.INPUT_HOOKS) == set(INPUT_HOOKS)
    assert set(registry.OUTPUT_HOOKS) == set(OUTPUT_HOOKS)


@pytest.mark.parametrize("name", sorted(RELEASES))
def test_threshold_is_the_weightlens_paper_preset_of_the_family(name: str) -> None:
    release = RELEASES[name]
    assert release.weightlens_threshold == thresholds_for(release.family, "paper").t_tok
    assert release.weightlens_threshold == (4.0 if release.family == "gpt2" else 4.5)


@pytest.mark.parametrize("name", sorted(RELEASES))
def test_every_layer_has_its_own_concrete_file(name: str) -> None:
    release = RELEASES[name]
    references = [release.transcoder_reference(layer) for layer in release.layers]
    assert len(set(references)) == release.n_layers
    for layer, reference in zip(release.layers, references, strict=True):
        assert not set("{}*") & set(reference), reference
        parsed = parse_hf_reference(reference)
        assert (parsed.repo_id, parsed.revision) == (release.repo, release.revision)
        assert f"layer_{layer}" in parsed.path or f"blocks.{layer}." in parsed.path
    with pytest.raises(InputError, match=f"layer {release.n_layers} is out of range"):
        release.file_in_repo(release.n_layers)


def test_gemmascope_l0_table_covers_every_layer() -> None:
    release = RELEASES["gemma-2-2b-gemmascope"]
    assert sorted(release.l0_per_layer) == release.layers
    assert release.path_template.count("*") == 1 and "{layer}" in release.path_template


# --- registry validation -------------------------------------------------------------------------


def _entry(**changes):
    raw = yaml.safe_load((Path(registry.__file__).parent / "registry.yaml").read_text())[
        "gpt2-dunefsky"
    ]
    raw.update(changes)
    return raw


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"format": "pickle"}, "field 'format' is 'pickle'"),
        ({"n_layers": "12"}, "field 'n_layers' has the wrong type"),
        ({"skip": 1}, "field 'skip' has the wrong type"),
        ({"n_features": True}, "field 'n_features' has the wrong type"),
        ({"file_pattern": "layer.pt"}, "has no {layer}"),
        ({"colour": "red"}, "unknown field"),
        ({"repo": "gpt2-transcoders"}, "field 'repo' is not of the form org/name"),
        ({"file_pattern": "l{layer}_{l0}.pt", "l0_per_layer": {0: 5}}, "'l0_per_layer' must give"),
    ],
)
def test_bad_entries_name_the_entry_and_field(tmp_path, changes, message) -> None:
    path = tmp_path / "registry.yaml"
    path.write_text(yaml.safe_dump({"my-release": _entry(**changes)}))
    with pytest.raises(InputError, match="entry 'my-release'") as error:
        registry.load_registry(path)
    assert message in str(error.value)


def test_missing_field_is_named(tmp_path) -> None:
    raw = _entry()
    del raw["d_model"]
    path = tmp_path / "registry.yaml"
    path.write_text(yaml.safe_dump({"my-release": raw}))
    with pytest.raises(InputError, match="field 'd_model' is missing"):
        registry.load_registry(path)


def test_unknown_release_lists_the_known_ones() -> None:
    with pytest.raises(InputError, match="gpt2-dunefsky"):
        registry.get_release("gpt-5")


# --- hf:// references ----------------------------------------------------------------------------


def test_local_templates_are_only_formatted(tmp_path) -> None:
    def no_download(*args):
        raise AssertionError("a local path must not be downloaded")

    template = str(tmp_path / "layer_{layer}" / "params.npz")
    path = resolve_transcoder_path(template, 7, download=no_download, list_files=no_download)
    assert path == tmp_path / "layer_7" / "params.npz"


def test_hf_reference_is_downloaded_with_its_revision(hub) -> None:
    file = hub.add("org/repo", "sub/layer_3.safetensors", "v2")
    file.write_bytes(b"x")
    path = resolve_transcoder_path(
        "hf://org/repo/sub/layer_{layer}.safetensors?revision=v2", 3, download=hub.download
    )
    assert path == file
    assert hub.downloads == [("org/repo", "sub/layer_3.safetensors", "v2")]


def test_circuit_tracer_files_bring_the_config_beside_them(hub) -> None:
    hub.add("org/repo", "layer_0.safetensors").write_bytes(b"x")
    hub.add("org/repo", "config.yaml").write_text("feature_input_hook: hook_resid_mid\n")
    hub.add("org/other", "deep/layer_0.safetensors").write_bytes(b"x")
    resolve_transcoder_path(
        "hf://org/repo/layer_{layer}.safetensors", 0, fmt="circuit_tracer", download=hub.download
    )
    resolve_transcoder_path(  # no config.yaml there: not an error
        "hf://org/other/deep/layer_{layer}.safetensors",
        0,
        fmt="circuit_tracer",
        download=hub.download,
    )
    assert ("org/repo", "config.yaml", None) in hub.downloads
    assert ("org/other", "deep/config.yaml", None) in hub.downloads


def test_missing_hub_file_names_repository_file_and_layer(hub) -> None:
    with pytest.raises(InputError, match=r"layer 4: org/repo has no file 'layer_4.pt'"):
        resolve_transcoder_path("hf://org/repo/layer_{layer}.pt", 4, download=hub.download)


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("hf://org/layer_{layer}.pt", "not of the form"),
        ("hf://org/repo/layer_{layer}.pt?branch=x", "only one '?revision=' option"),
        ("hf://org/repo/{model}/layer_{layer}.pt", "only {layer} may stand in braces"),
    ],
)
def test_malformed_references_are_named(hub, template: str, message: str) -> None:
    with pytest.raises(InputError, match="transcoder path") as error:
        resolve_transcoder_path(template, 0, download=hub.download)
    assert message in str(error.value)


def test_lowest_numbered_match_compares_numbers_not_strings() -> None:
    files = [
        "layer_1/width_16k/average_l0_120/params.npz",
        "layer_1/width_16k/average_l0_9/params.npz",
        "layer_1/width_16k/average_l0_45/params.npz",
        "layer_1/width_65k/average_l0_3/params.npz",
        "layer_11/width_16k/average_l0_2/params.npz",
        "layer_1/width_16k/average_l0_9/other.npz",
    ]
    pattern = "layer_1/width_16k/average_l0_*/params.npz"
    assert lowest_numbered_match(pattern, files) == "layer_1/width_16k/average_l0_9/params.npz"
    assert lowest_numbered_match("layer_2/*/params.npz", files) is None


def test_gemmascope_template_resolves_to_the_registry_file_of_each_layer(hub) -> None:
    """The preset's one template (``average_l0_*``) picks the file the registry records, when the
    repository also holds higher-L0 and wider files."""
    release = RELEASES["gemma-2-2b-gemmascope"]
    for layer in release.layers:
        l0 = release.l0_per_layer[layer]
        for other in (f"width_16k/average_l0_{l0}", f"width_16k/average_l0_{l0 * 3 + 100}"):
            hub.add(release.repo, f"layer_{layer}/{other}/params.npz").write_bytes(b"x")
        hub.add(release.repo, f"layer_{layer}/width_65k/average_l0_1/params.npz").write_bytes(b"x")
    for layer in release.layers:
        path = resolve_transcoder_path(
            release.path_template, layer, download=hub.download, list_files=hub.list_files
        )
        assert path == hub.folder(release.repo) / release.file_in_repo(layer)


def test_pattern_without_a_match_is_an_error(hub) -> None:
    hub.add("org/repo", "layer_0/width_16k/average_l0_5/params.npz").write_bytes(b"x")
    with pytest.raises(InputError, match="no file of org/repo matches"):
        resolve_transcoder_path(
            "hf://org/repo/layer_{layer}/width_16k/average_l0_*/params.npz",
            1,
            download=hub.download,
            list_files=hub.list_files,
        )


# --- each release end to end: hub file in its real format -> loader -----------------------------


def _publish(release: registry.TranscoderRelease, hub: FakeHub, layer: int, rng) -> None:
    """Write a tiny transcoder for ``layer`` where the release keeps it, in its format."""
    target = hub.add(release.repo, release.file_in_repo(layer), release.revision)
    if release.format == "dunefsky":
        write_dunefsky(target, dunefsky_arrays(rng), layer=layer)
    elif release.format == "gemmascope":
        np.savez(target, **gemmascope_arrays(rng))
    elif release.repo.startswith("google/gemma-scope-2-"):
        save_file(gemma_scope_2_arrays(rng, affine=release.skip), str(target))
    elif release.name == "llama-3.2-1b-skip":  # the pinned files: W_dec transposed, no config
        save_file(skip_transcoder_arrays(rng, layout="pinned"), str(target))
    else:  # a circuit-tracer transcoder set: layer files and a config.yaml beside them
        save_file(skip_transcoder_arrays(rng), str(target))
        hooks = {"resid_mid": "hook_resid_mid", "mlp_out": "mlp.hook_out"}
        (target.parent / "config.yaml").write_text(
            yaml.safe_dump(
                {
                    "model_name": release.model,
                    "feature_input_hook": hooks[release.input_hook],
                    "feature_output_hook": hooks[release.output_hook],
                }
            )
        )


@pytest.mark.parametrize("name", sorted(RELEASES))
def test_release_files_load_with_the_registry_hooks(hub, name: str) -> None:
    release = RELEASES[name]
    rng = np.random.default_rng(0)
    layer = release.n_layers - 1
    _publish(release, hub, layer, rng)
    path = resolve_transcoder_path(
        release.path_template,
        layer,
        fmt=release.format,
        download=hub.download,
        list_files=hub.list_files,
    )
    fallback = registry.fallback_hooks(release.model_config()["transcoders"])
    assert fallback == (release.input_hook, release.output_hook)
    transcoder = load_transcoder(
        path, release.format, layer=layer, d_model=D_MODEL, fallback_hooks=fallback
    )
    assert (transcoder.input_hook, transcoder.output_hook) == (
        release.input_hook,
        release.output_hook,
    )
    assert transcoder.activation == release.activation and transcoder.skip == release.skip
    assert transcoder.n_features == D_SAE


def test_jobs_resolve_hf_paths_of_pretrained_transcoders(hub, monkeypatch) -> None:
    """The location a job loads from is the downloaded file, not the hf:// text of the config."""
    from circuit_insights.transcoders.loading import transcoder_location

    release = RELEASES["gpt2-dunefsky"]
    _publish(release, hub, 2, np.random.default_rng(1))
    monkeypatch.setattr(registry, "_hub_download", hub.download)
    monkeypatch.setattr(registry, "_hub_list_files", hub.list_files)
    model_config = {
        "transcoders": {"kind": "pretrained", "path": release.path_template, "format": "dunefsky"}
    }
    location = transcoder_location(model_config, [], 2)
    assert Path(location) == hub.folder(release.repo, release.revision) / release.file_in_repo(2)
    assert load_transcoder(location, "dunefsky", layer=2, d_model=D_MODEL).n_features == D_SAE


# --- presets agree with the registry ---------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "workflow/schemas/config.schema.yaml"
PRESET_FILES = sorted((ROOT / "config/presets").glob("*.yaml"))


def preset_block(path: Path) -> tuple[str, dict]:
    """The one model block of a preset, with the schema's defaults filled in."""
    from circuit_insights.pipeline.config import load_config

    config = load_config(path, SCHEMA)
    ((name, block),) = config["models"].items()
    return name, {**block, "_config": config}


@pytest.mark.parametrize("path", PRESET_FILES, ids=lambda path: path.stem)
def test_each_preset_matches_its_registry_entry(path: Path) -> None:
    _, block = preset_block(path)
    release = registry.release_for_path(block["transcoders"]["path"])
    assert release is not None, f"{path.name}: no registry entry has its transcoder path"
    expected = release.model_config()
    assert block["source"] == expected["source"] == release.model
    assert block["prepend_bos"] == release.prepend_bos
    assert block["layers"] == release.layers
    for key, value in expected["transcoders"].items():
        assert block["transcoders"][key] == value, f"{path.name}: transcoders.{key}"
    assert registry.fallback_hooks(block["transcoders"]) == (
        release.input_hook,
        release.output_hook,
    )
    if release.prepend_bos:  # position 0 (BOS) stays out of maxima and samples
        assert block["_config"]["cache"]["exclude_bos"] is True


def test_release_for_path_and_fallback_hooks() -> None:
    llama = RELEASES["llama-3.2-1b-skip"]
    assert registry.release_for_path(llama.path_template) == llama
    assert registry.release_for_path(llama.path_template.replace("new-training", "main")) is None
    assert registry.release_for_path("/local/layer_{layer}.safetensors") is None
    local = {"path": "/local/layer_{layer}.safetensors"}
    assert registry.fallback_hooks(local) is None
    assert registry.fallback_hooks({**local, "input_hook": "mlp_in", "output_hook": None}) is None
    assert registry.fallback_hooks({**local, "input_hook": "mlp_in", "output_hook": "mlp_out"}) == (
        "mlp_in",
        "mlp_out",
    )


# --- Llama-3.2-1B: the pinned mntss layout through the preset's loader, spliced ------------------


def test_pinned_llama_file_loads_through_the_preset_and_splices_exactly(hub, monkeypatch) -> None:
    """The file exactly as the pinned revision holds it (W_dec (d_model, d_transcoder), no
    config.yaml) is fetched and loaded as the preset's jobs do, with the registry's hooks, and the
    tiny Llama with it spliced in writes the transcoder's own output where its MLP's was."""
    import torch

    from circuit_insights.models.subject import SubjectModel
    from circuit_insights.models.tiny import tiny_hf_model
    from circuit_insights.transcoders.loading import load_layer_transcoder, transcoder_location

    release = RELEASES["llama-3.2-1b-skip"]
    name, block = preset_block(ROOT / "config/presets/llama-3.2-1b-skip.yaml")
    layer, d_model = 1, 32
    model = SubjectModel(tiny_hf_model("llama", d_model=d_model), None)
    arrays = skip_transcoder_arrays(np.random.default_rng(3), layout="pinned", d_model=d_model)
    assert arrays["W_dec"].shape == (d_model, D_SAE)
    target = hub.add(release.repo, release.file_in_repo(layer), release.revision)
    save_file(arrays, str(target))
    assert not (target.parent / "config.yaml").exists()
    monkeypatch.setattr(registry, "_hub_download", hub.download)
    monkeypatch.setattr(registry, "_hub_list_files", hub.list_files)
    tiny_block = {**block, "transcoders": {**block["transcoders"], "n_features": D_SAE}}

    location = transcoder_location(tiny_block, [], layer)
    transcoder = load_layer_transcoder(tiny_block, model, layer, location, name)

    assert (release.repo, release.file_in_repo(layer), release.revision) in hub.downloads
    assert (transcoder.input_hook, transcoder.output_hook) == ("resid_mid", "mlp_out")
    assert transcoder.skip and transcoder.activation == "relu"
    seen: dict[str, torch.Tensor] = {}
    norm = model.block_part(layer, "pre_mlp_norm")
    mlp = model.block_part(layer, "mlp")
    ids = torch.randint(0, model.vocab_size, (2, 7), generator=torch.Generator().manual_seed(0))
    with model.splice({layer: transcoder}):
        handles = [
            norm.register_forward_pre_hook(lambda _m, args: seen.update(x=args[0].detach())),
            mlp.register_forward_hook(lambda _m, _a, out: seen.update(y=out.detach())),
        ]
        try:
            model.logits(ids)
        finally:
            for handle in handles:
                handle.remove()
    x = seen["x"].double().numpy()  # (batch, pos, d_model): resid_mid
    # circuit-tracer's forward on the file's tensors: W_dec used transposed, W_skip as x @ W_skip.T.
    pre = x @ arrays["W_enc"].T.astype(np.float64) + arrays["b_enc"]
    expected = np.maximum(pre, 0) @ arrays["W_dec"].T + arrays["b_dec"] + x @ arrays["W_skip"].T
    np.testing.assert_allclose(seen["y"].double().numpy(), expected, rtol=1e-4, atol=1e-4)
    true_mlp = mlp(norm(seen["x"])).detach().double().numpy()
    assert not np.allclose(true_mlp, expected, atol=1e-3), "the MLP was really replaced"


# --- GPT-2 + Dunefsky: BOS 50256 as in the publisher's training ---------------------------------

GPT2_VOCAB = 50257
GPT2_BOS = 50256


def tiny_gpt2_with_real_bos():
    """A tiny GPT-2 whose vocabulary and BOS are the real ones (BOS = EOS = 50256)."""
    from circuit_insights.models.tiny import tiny_hf_model

    hf = tiny_hf_model("gpt2", n_layers=2, d_model=32, vocab_size=GPT2_VOCAB)
    assert hf.config.bos_token_id == GPT2_BOS
    return hf


def test_gpt2_preset_contexts_start_with_bos_50256(tmp_path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from circuit_insights.data.corpus import tokenize_contexts
    from circuit_insights.models.loading import load_tokenizer_and_bos

    _, block = preset_block(ROOT / "config/presets/gpt2-dunefsky.yaml")
    folder = tmp_path / "gpt2"
    tiny_gpt2_with_real_bos().config.save_pretrained(folder)
    words = "the cat sat on a mat and then ran off to see the dog".split()
    vocab = {word: index for index, word in enumerate(dict.fromkeys(words))}
    vocab["<|endoftext|>"] = GPT2_BOS  # GPT-2's one special token: BOS = EOS = unk
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    special = "<|endoftext|>"
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=special, eos_token=special, unk_token=special
    )
    tokenizer.save_pretrained(folder)

    loaded, bos = load_tokenizer_and_bos(block, str(folder))
    assert bos == GPT2_BOS
    documents = [" ".join(words[i:] + words[:i]) for i in range(len(words))]
    contexts = tokenize_contexts(documents, loaded, context_length=8, bos_token_id=bos)
    assert contexts.n_contexts > 3
    assert (contexts.tokens[:, 0] == GPT2_BOS).all()
    # The separator between documents is EOS (the same id), but no context is BOS-only.
    assert (contexts.tokens[:, 1:] != GPT2_BOS).any(axis=1).all()


def test_gpt2_preset_leaves_position_0_out_of_maxima(tmp_path) -> None:
    import pyarrow.parquet as pq
    import torch

    from circuit_insights.data.cache_split import cache_split
    from circuit_insights.data.shards import make_shards
    from circuit_insights.models.subject import SubjectModel
    from circuit_insights.transcoders.base import Transcoder

    _, block = preset_block(ROOT / "config/presets/gpt2-dunefsky.yaml")
    model = SubjectModel(tiny_gpt2_with_real_bos(), None, prepend_bos=block["prepend_bos"])
    assert model.bos_token_id == GPT2_BOS
    torch.manual_seed(0)
    transcoder = Transcoder(32, 24, input_hook="mlp_in_unaffine", center_input=True)
    with torch.no_grad():
        transcoder.b_enc.fill_(0.5)  # every feature fires nearly everywhere, BOS included
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 1000, size=(6, 9)).astype(np.int32)
    tokens[:, 0] = GPT2_BOS
    context_ids = np.arange(6, dtype=np.int32)
    shards = make_shards(24, 12)
    out_paths = {
        shard: {
            kind: str(tmp_path / f"{kind}_{shard.start}.parquet")
            for kind in ("activations", "maxima", "feature_stats")
        }
        for shard in shards
    }
    cache_split(
        model,
        transcoder,
        0,
        context_ids,
        tokens,
        shards,
        out_paths,
        batch_size=4,
        exclude_bos=block["_config"]["cache"]["exclude_bos"],
    )
    activations = pq.read_table([out_paths[s]["activations"] for s in shards][0]).to_pandas()
    maxima = pq.read_table(out_paths[shards[0]]["maxima"]).to_pandas()
    at_bos = activations[activations["position"] == 0]
    assert len(at_bos) and at_bos["excluded"].all()
    assert not activations[activations["position"] > 0]["excluded"].any()
    assert len(maxima) and (maxima["max_position"] >= 1).all()
    kept = activations[~activations["excluded"]]
    brute = kept.groupby(["feature", "context"])["activation"].max()
    got = maxima.set_index(["feature", "context"])["max_activation"]
    np.testing.assert_allclose(
        got.sort_index().to_numpy(), brute.sort_index().to_numpy(), rtol=1e-6
    )


def test_gpt2_preset_validates_each_token_as_bos_50256_then_token() -> None:
    import torch

    from circuit_insights.models.subject import SubjectModel
    from circuit_insights.weightlens.validation import single_token_inputs

    _, block = preset_block(ROOT / "config/presets/gpt2-dunefsky.yaml")
    model = SubjectModel(tiny_gpt2_with_real_bos(), None, prepend_bos=block["prepend_bos"])
    inputs = single_token_inputs(model, np.array([5, 700, 50255]))
    assert inputs.tolist() == [[GPT2_BOS, 5], [GPT2_BOS, 700], [GPT2_BOS, 50255]]
    # The token then sits at position 1, after GPT-2's attention sink, as in training.
    values = model.hook_values(inputs, {0: ["mlp_in_unaffine"]})[(0, "mlp_in_unaffine")]
    alone = model.hook_values(inputs[:, 1:], {0: ["mlp_in_unaffine"]})[(0, "mlp_in_unaffine")]
    assert values.shape[:2] == (3, 2)
    assert not torch.allclose(values[:, 1], alone[:, 0], atol=1e-4)
