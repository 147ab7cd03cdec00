"""torchvision architectures started from a local weights file (`options.weights_file`): nothing downloaded."""

from __future__ import annotations

import pytest
import torch
import torchvision

from lepton_ray.config import ModelSpec
from lepton_ray.errors import ConfigError
from lepton_ray.models.zoo import build_model


@pytest.fixture(scope="module")
def imagenet_like(tmp_path_factory):
    """A resnet18 state_dict shaped like torchvision's ImageNet file (3-channel 7x7 stem, 1000 classes), seeded."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    return path


def test_every_layer_but_the_adapted_stem_and_classifier_starts_from_the_file(imagenet_like):
    file = torch.load(imagenet_like, weights_only=True)
    model = build_model(ModelSpec(name="resnet18", options={"weights_file": str(imagenet_like)}), (3, 32, 32), 10)
    own = model.state_dict()
    assert torch.equal(own["layer3.1.conv2.weight"], file["layer3.1.conv2.weight"])
    assert torch.equal(own["bn1.running_var"], file["bn1.running_var"]) and torch.equal(own["layer4.1.bn2.weight"], file["layer4.1.bn2.weight"])
    assert own["conv1.weight"].shape == (64, 3, 3, 3) and own["fc.weight"].shape == (10, 512), "stem and classifier adapted to 32 px, 10 classes"
    fresh = build_model(ModelSpec(name="resnet18"), (3, 32, 32), 10).state_dict()
    assert not torch.equal(fresh["layer3.1.conv2.weight"], file["layer3.1.conv2.weight"])


@pytest.mark.parametrize(("weights", "message"), [
    (lambda tmp: str(tmp / "missing.pth"), "not found"),
    (lambda tmp: torch.save(torchvision.models.mobilenet_v2(weights=None).state_dict(), tmp / "m.pth") or str(tmp / "m.pth"), "weights this architecture lacks"),
    (lambda tmp: (tmp / "junk.pth").write_text("junk") and str(tmp / "junk.pth"), "torch.load(weights_only=True)"),
])
def test_a_bad_weights_file_is_one_line_naming_the_option(tmp_path, weights, message):
    with pytest.raises(ConfigError, match=r"^teacher\.options: weights_file ") as caught:
        build_model(ModelSpec(name="resnet18", options={"weights_file": weights(tmp_path)}), (3, 32, 32), 10, field="teacher")
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_a_file_of_other_widths_names_the_first_layer_that_differs(tmp_path):
    torch.save(torchvision.models.resnet50(weights=None, width_per_group=32).state_dict(), tmp_path / "narrow.pth")
    with pytest.raises(ConfigError, match=r"layer 'layer1\.0\.conv1\.weight' is \(32, 64, 1, 1\) in the file but \(64, 64, 1, 1\) here"):
        build_model(ModelSpec(name="resnet50", options={"weights_file": str(tmp_path / "narrow.pth")}), (3, 32, 32), 10)
