"""CAL's model against Simple-CCReID's (guxinqian/Simple-CCReID, commit 88c5b0b): the feature,
the identity and clothes classifiers' outputs and the test feature written out here from its
recipe (``models/img_resnet.py``, ``models/utils/pooling.py``, ``models/classifier.py``,
``test.py``), its initialisation, the ResNet-50's stride, and the rebuild from a checkpoint
alone."""

import pytest
import torch
import torch.nn.functional as F

from csgn_plugin.compat import torchreid_api
from csgn_plugin.inference import load_model
from csgn_plugin.modeling import CALModel, NormalizedClassifier
from csgn_plugin.modeling.spec import ModelSpec, input_spec, model_spec_for

INPUT = input_spec(64, 32, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


def images(n=4, seed=0):
    return torch.randn(n, 3, 64, 32, generator=torch.Generator().manual_seed(seed))


def bn_feature(model, imgs, training):
    """max- and average-pooled map, concatenated (max first: pooling.py MaxAvgPooling), through
    BatchNorm1d: the batch's biased statistics in training, the running ones in eval."""
    maps = model.backbone(imgs)
    pooled = torch.cat([maps.amax(dim=(2, 3)), maps.mean(dim=(2, 3))], dim=1)
    if training:
        mean, var = pooled.mean(0), pooled.var(0, unbiased=False)
    else:
        mean, var = model.bn.running_mean, model.bn.running_var
    return (pooled - mean) / torch.sqrt(var + model.bn.eps) * model.bn.weight + model.bn.bias


def cosines(x, weight):
    return (x @ weight.t()) / (x.norm(dim=1, keepdim=True) * weight.norm(dim=1)[None, :])


def test_training_outputs_are_the_bn_feature_and_its_identity_logits():
    torch.manual_seed(0)
    model = CALModel("cal_osnet_x0_25", 5, "linear", pretrained=False).train()
    x = images()
    out = model(x)
    feature = bn_feature(model, x, training=True)
    assert feature.shape == (4, 256)  # 2 x OSNet x0.25's 128 channels
    torch.testing.assert_close(out["features"], feature, rtol=1e-4, atol=1e-5)
    logits = feature @ model.classifier.weight.t() + model.classifier.bias
    torch.testing.assert_close(out["logits"], logits, rtol=1e-4, atol=1e-5)


def test_normalised_identity_classifier_gives_cosines():
    torch.manual_seed(1)
    model = CALModel("cal_osnet_x0_25", 5, "normalized", pretrained=False).train()
    x = images()
    out = model(x)
    torch.testing.assert_close(out["logits"], cosines(out["features"], model.classifier.weight))
    assert isinstance(model.classifier, NormalizedClassifier)


def test_test_feature_is_the_normalised_sum_over_the_image_and_its_mirror():
    """test.py's extract_img_feature: model(imgs) + model(flip(imgs)), L2-normalised."""
    torch.manual_seed(2)
    model = CALModel("cal_osnet_x0_25", 5, "linear", pretrained=False)
    model.train()
    model(images(8, seed=5))  # running statistics away from their initial values
    model.eval()
    x = images()
    summed = bn_feature(model, x, False) + bn_feature(model, torch.flip(x, [3]), False)
    expected = summed / summed.norm(dim=1, keepdim=True)
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-5)


def test_initialisation_is_simple_ccreids():
    torch.manual_seed(3)
    model = CALModel("cal_osnet_x0_25", 50, "linear", pretrained=False)
    bn, fc = model.bn.requires_grad_(False), model.classifier.requires_grad_(False)
    assert abs(float(bn.weight.mean()) - 1.0) < 0.005 and 0.015 < float(bn.weight.std()) < 0.025
    assert torch.equal(bn.bias, torch.zeros_like(bn.bias))
    assert 0.0008 < float(fc.weight.std()) < 0.0012 and torch.equal(fc.bias, torch.zeros(50))
    clothes = NormalizedClassifier(256, 40)
    torch.testing.assert_close(clothes.weight.norm(dim=1), torch.ones(40))  # unit rows


def test_resnet50_has_a_stride_1_last_stage_and_a_4096_d_feature():
    torch.manual_seed(4)
    model = CALModel("cal_resnet50", 3, "linear", pretrained=False).eval()
    block = model.backbone[7][0]  # layer4's first block
    assert block.conv2.stride == (1, 1) and block.downsample[0].stride == (1, 1)
    with torch.no_grad():
        maps = model.backbone(images(1))
        assert maps.shape == (1, 2048, 4, 2)  # 64x32 / 16: layer 4 does not halve
        assert model(images(2)).shape == (2, 4096)


@pytest.mark.parametrize("classifier", ["linear", "normalized"])
def test_a_checkpoint_rebuilds_the_model_alone(tmp_path, classifier):
    torch.manual_seed(5)
    model = CALModel("cal_osnet_x0_25", 7, classifier, pretrained=False)
    model.train()
    model(images(8))
    model.eval()
    spec = model_spec_for("cal_osnet_x0_25", model, INPUT)
    assert spec.architecture == {"identity_classifier": classifier}
    path = tmp_path / "cal.pth"
    torch.save({"state_dict": model.state_dict(), "model_spec": spec.to_dict()}, path)
    rebuilt, read = load_model(str(path))
    assert read == spec and isinstance(rebuilt, CALModel)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(images()), model(images()))


def test_a_spec_with_another_architecture_is_refused():
    with pytest.raises(ValueError, match="identity_classifier"):
        ModelSpec("cal_resnet50", 5, {"identity_classifier": "cosine"}, INPUT)
    with pytest.raises(ValueError, match="identity_classifier"):
        ModelSpec("cal_resnet50", 5, {"loss": "softmax"}, INPUT)


def test_registered_with_torchreid():
    model = torchreid_api().models.build_model("cal_osnet_x0_25", 4, pretrained=False)
    assert isinstance(model, CALModel) and model.identity_classifier == "linear"
    assert F.normalize(model.eval()(images(2)), dim=1).shape == (2, 256)
