"""The artifact contract: what a shipped ONNX file says about itself in its `metadata_props`, so a deployer
can feed it correctly without our code (the same keys become the MLflow model version's tags).

| key | value |
|---|---|
| `lepton.contract_version` | `1`; bumped when a key's meaning changes |
| `lepton.preprocessing` | JSON: `input_name`, `output_name`, `layout` (NCHW), `input_shape` [C, H, W], `dtype`, `raw` (what raw inputs are), `raw_range` ([low, high] integers, or null), `scale`, `mean` and `std` (per channel), `formula`: input = (raw * scale - mean[c]) / std[c]. Text models: `layout` NL, `input_shape` [max_length], `dtype` int64, `formula` (the tokenization), `vocabulary` (the tokenizer: `words` in id order, `pattern`, `pad_id`, `unknown_id`, `first_word_id`, `max_length`) |
| `lepton.class_names` | JSON list: the class of each output index |
| `lepton.dataset`, `lepton.input_layout` | the data set's registry name; `NCHW` (images) or `NL` (token ids) |
| `lepton.workflow`, `lepton.trial`, `lepton.sweep_run_id` | where the file came from: workflow name, trial number, the sweep's MLflow run id (when known) |

In onnxruntime: `json.loads(session.get_modelmeta().custom_metadata_map["lepton.preprocessing"])`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import onnx

from lepton_ray.data.contract import LAYOUT, TOKEN_LAYOUT, DataContract, TokenContract
from lepton_ray.errors import ExportError
from lepton_ray.export.onnx_graph import INPUT_NAME, OUTPUT_NAME

CONTRACT_VERSION = "1"
VERSION_KEY = "lepton.contract_version"
PREPROCESSING_KEY = "lepton.preprocessing"
CLASS_NAMES_KEY = "lepton.class_names"
DATASET_KEY = "lepton.dataset"
LAYOUT_KEY = "lepton.input_layout"
WORKFLOW_KEY = "lepton.workflow"
TRIAL_KEY = "lepton.trial"
SWEEP_RUN_KEY = "lepton.sweep_run_id"
PREFIX = "lepton."


def artifact_metadata(contract: DataContract | TokenContract, workflow: str | None = None, trial: int | None = None, sweep_run_id: str | None = None) -> dict[str, str]:
    """The `metadata_props` of a file whose model was trained on `contract`'s data; unknown provenance is left out."""
    preprocessing = {"input_name": INPUT_NAME, "output_name": OUTPUT_NAME, **contract.as_dict()}
    metadata = {
        VERSION_KEY: CONTRACT_VERSION, PREPROCESSING_KEY: json.dumps(preprocessing), CLASS_NAMES_KEY: json.dumps(list(contract.class_names)),
        DATASET_KEY: contract.dataset, LAYOUT_KEY: contract.layout,
    }
    provenance = {WORKFLOW_KEY: workflow, TRIAL_KEY: trial, SWEEP_RUN_KEY: sweep_run_id}
    return metadata | {key: str(value) for key, value in provenance.items() if value is not None}


def describe(metadata: Mapping[str, str]) -> str:
    """One line for a human: what to feed the model and what comes out (empty without a contract)."""
    if PREPROCESSING_KEY not in metadata:
        return ""
    facts, names = preprocessing(metadata), class_names(metadata)
    shown = ", ".join(names[:10]) + (f", ... ({len(names)} in all)" if len(names) > 10 else "")
    return (
        f"{_INPUT_DESCRIPTIONS[facts['layout']](facts)}; raw = {facts['raw']}. "
        f"Output `{facts['output_name']}` (N, {len(names)}): argmax indexes the classes [{shown}]. Exact values: metadata `{PREPROCESSING_KEY}`, `{CLASS_NAMES_KEY}`."
    )


def _image_input(facts: Mapping[str, Any]) -> str:
    shape = ", ".join(str(size) for size in facts["input_shape"])
    return (f"Input `{facts['input_name']}`: float32 {facts['layout']} (N, {shape}) = (raw * {facts['scale']:.6g} - mean[c]) / std[c], "
            f"mean {_rounded(facts['mean'])}, std {_rounded(facts['std'])}")


def _token_input(facts: Mapping[str, Any]) -> str:
    vocabulary = facts["vocabulary"]
    return (f"Input `{facts['input_name']}`: int64 token ids (N, {vocabulary['max_length']}): the lower-cased words of the text "
            f"(regex `{vocabulary['pattern']}`) looked up in the {len(vocabulary['words'])}-word vocabulary (id = first_word_id "
            f"{vocabulary['first_word_id']} + position in `words`, other words {vocabulary['unknown_id']}), cut or padded with "
            f"{vocabulary['pad_id']} to {vocabulary['max_length']}")


_INPUT_DESCRIPTIONS = {LAYOUT: _image_input, TOKEN_LAYOUT: _token_input}


def _rounded(values: list[float]) -> str:
    return "[" + ", ".join(f"{value:.4g}" for value in values) + "]"


def stamp(model: onnx.ModelProto, metadata: Mapping[str, str]) -> onnx.ModelProto:
    """Replace the model's `lepton.*` metadata with `metadata` (the other props stay)."""
    others = {prop.key: prop.value for prop in model.metadata_props if not prop.key.startswith(PREFIX)}
    onnx.helper.set_model_props(model, others | dict(metadata))
    return model


def read_metadata(path: Path) -> dict[str, str]:
    """The file's `lepton.*` metadata, as ONNX Runtime reads it."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return {key: value for key, value in session.get_modelmeta().custom_metadata_map.items() if key.startswith(PREFIX)}


def preprocessing(metadata: Mapping[str, str]) -> dict[str, Any]:
    return json.loads(_required(metadata, PREPROCESSING_KEY))


def class_names(metadata: Mapping[str, str]) -> list[str]:
    return json.loads(_required(metadata, CLASS_NAMES_KEY))


def _required(metadata: Mapping[str, str], key: str) -> str:
    if key not in metadata:
        raise ExportError(f"{key}: missing from the model's metadata; re-export the model with `lepton-ray export` so it carries its input contract")
    return metadata[key]
