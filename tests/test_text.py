"""Text pieces on tiny generated sentences: the word vocabulary and the text models (no package needed)."""

from __future__ import annotations

import pytest
import torch

from lepton_ray.data.text import PAD_ID, UNKNOWN_ID, WordVocabulary, words_of
from lepton_ray.errors import DataError
from lepton_ray.models.text import BagOfEmbeddings, TextTransformer

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
