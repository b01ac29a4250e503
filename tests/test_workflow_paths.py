"""Where jobs find models and artifacts."""

from __future__ import annotations

from circuit_insights.pipeline.config import gpus_for_device
from circuit_insights.pipeline.paths import job_model_location, layer_table


def test_embedded_models_are_found_beside_their_input_files() -> None:
    files = ["resources/models/smollm2/model.safetensors"]
    assert job_model_location("embedded:smollm2", files) == "resources/models/smollm2"
    assert job_model_location("embedded:smollm2", files[0]) == "resources/models/smollm2"


def test_sources_without_built_files_stay_as_configured() -> None:
    # a hub id or folder, and an embedded LLM that a server at llm.url serves (nothing built)
    assert job_model_location("openai-community/gpt2", []) == "openai-community/gpt2"
    assert job_model_location("embedded:smollm2", []) == "embedded:smollm2"


def test_layer_table_sits_beside_the_shard_folder() -> None:
    assert (
        layer_table("results", "gpt2", 5, "weightlens") == "results/gpt2/layer5/weightlens.parquet"
    )


def test_only_cuda_devices_ask_for_a_gpu() -> None:
    assert [gpus_for_device(d) for d in ("cpu", "cuda", "cuda:3", "mps")] == [0, 1, 1, 0]
