"""`lepton-ray list KIND`: every registered name with the first line of its docstring."""

from __future__ import annotations

import pytest

from lepton_ray.catalog import KINDS
from lepton_ray.cli import main

KNOWN = {
    "models": ("cnn_small", "A student-sized CNN"),
    "losses": ("kd", "Hinton et al., 2015"),
    "datasets": ("digits", "scikit-learn's bundled 8x8 digits"),
    "compressors": ("quantization", "Quantization-aware training"),
    "policies": ("knee", "The front point with the largest trade-off"),
    "searchers": ("random", "Uniform random search"),
}


def test_every_kind_is_listed_in_the_test():
    assert set(KNOWN) == set(KINDS.names())


@pytest.mark.parametrize("kind", sorted(KNOWN))
def test_list_prints_each_registered_name_with_its_docstrings_first_line(kind, capsys):
    assert main(["list", kind]) == 0
    lines = capsys.readouterr().out.splitlines()
    name, description = KNOWN[kind]
    assert any(line.split()[0] == name and description in line for line in lines), lines
    footer = ["(or your own"] if kind in ("models", "datasets") else []
    assert [line[: len("(or your own")] for line in lines[len(KINDS.get(kind)()):]] == footer, "one line per registered name, then the import-path note"
    assert all(line.rstrip().endswith((".", ")", ":")) or line.startswith("(") for line in lines), "no description cut mid-sentence"


def test_a_description_that_wraps_in_its_docstring_is_printed_whole(capsys):
    assert main(["list", "models"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("text_transformer "))
    assert line.endswith("a final norm, the mean over real tokens, and a linear head."), line


def test_list_compressors_names_them_by_their_compression_field(capsys):
    assert main(["list", "compressors"]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()] == ["channel_pruning", "low_rank", "pruning", "quantization"]


def test_list_of_an_unknown_kind_exits_2_with_one_line_listing_the_kinds(capsys):
    assert main(["list", "modles"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "lepton-ray: error: list: unknown kind 'modles'; did you mean 'models'? (choose one of: compressors, datasets, losses, models, policies, searchers)"
