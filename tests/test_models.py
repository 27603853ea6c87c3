"""The model catalogue: the course's MLPs, the configurable CNN, LeNet-5 and torchvision models."""

import socket

import pytest
import torch
from helpers import compose_config
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from torch import nn

from dlrun.core.errors import ConfigError, DlrunError
from dlrun.model import CNN, LeNet5, TorchvisionModel, count_parameters


def build(*overrides: str, in_shape=(1, 28, 28), num_classes: int = 10) -> nn.Module:
    torch.manual_seed(0)
    return instantiate(compose_config(*overrides).model, in_shape=in_shape, num_classes=num_classes)


def build_error(*overrides: str, **kwargs) -> str:
    """The one line a user sees: the model's ConfigError, which Hydra wraps while instantiating."""
    with pytest.raises(InstantiationException) as err:
        build(*overrides, **kwargs)
    assert isinstance(err.value.__cause__, ConfigError)
    return str(err.value.__cause__)


def test_cheat_sheet_2_2_1_network_maps_the_worked_example_to_sigmoid_of_minus_0_019():
    # The course cheat sheet's worked example, through dlrun's MLP with a binary head (hidden 2, relu): x = [0.5, 0.8],
    # W1 = [[0.4, -0.6], [0.7, 0.1]] (rows: hidden units), b1 = [0.1, -0.2], W2 = [0.9, -0.3], b2 = 0.05.
    cfg = ["model=mlp", "model.hidden_sizes=[2]", "model.activation=relu", "model.binary_head=true"]
    net = build(*cfg, in_shape=(2,), num_classes=2)
    hidden, output = [m for m in net.modules() if isinstance(m, nn.Linear)]
    assert output.out_features == 1, "a binary head: one logit"
    with torch.no_grad():
        hidden.weight.copy_(torch.tensor([[0.4, -0.6], [0.7, 0.1]]))
        hidden.bias.copy_(torch.tensor([0.1, -0.2]))
        output.weight.copy_(torch.tensor([[0.9, -0.3]]))
        output.bias.fill_(0.05)
        x = torch.tensor([[0.5, 0.8]])
        z1 = hidden(x)[0]
        z2 = net(x).item()
    # z1 = W1 x + b1 = [0.4*0.5 - 0.6*0.8 + 0.1, 0.7*0.5 + 0.1*0.8 - 0.2]; h = ReLU(z1) = [0, 0.23]
    assert z1.tolist() == pytest.approx([-0.18, 0.23], abs=5e-4)
    assert z1.clamp_min(0).tolist() == pytest.approx([0.0, 0.23], abs=5e-4)
    assert z2 == pytest.approx(0.9 * 0.0 - 0.3 * 0.23 + 0.05, abs=1e-6)
    assert z2 == pytest.approx(-0.019, abs=5e-4)
    assert torch.sigmoid(torch.tensor(z2)).item() == pytest.approx(0.495, abs=5e-4)


def test_the_course_mlps_have_their_parameter_counts_on_mnist():
    assert count_parameters(build("model=mlp_100")) == (784 * 100 + 100 + 100 * 10 + 10,) * 2
    assert count_parameters(build("model=mlp_50_50")) == (784 * 50 + 50 + 50 * 50 + 50 + 50 * 10 + 10,) * 2
    assert count_parameters(build("model=mlp", "model.hidden_sizes=[50,50]")) == count_parameters(build("model=mlp_50_50"))


@pytest.mark.parametrize(
    ("name", "module"),
    [
        ("sigmoid", nn.Sigmoid),
        ("tanh", nn.Tanh),
        ("relu", nn.ReLU),
        ("leaky_relu", nn.LeakyReLU),
        ("elu", nn.ELU),
        ("gelu", nn.GELU),
    ],
)
def test_mlp_activation_dropout_and_batch_norm_in_the_courses_order(name, module):
    net = build(
        "model=mlp", "model.hidden_sizes=[20,10]", f"model.activation={name}", "model.dropout=0.3", "model.batch_norm=true"
    )
    kinds = [type(m) for m in net.layers]
    block = [nn.Linear, nn.BatchNorm1d, module, nn.Dropout]
    assert kinds == block + block + [nn.Linear]
    assert net.layers[3].p == 0.3
    assert net(torch.randn(4, 1, 28, 28)).shape == (4, 10)


def test_unknown_activation_is_one_line():
    assert (
        build_error("model=mlp", "model.activation=swish")
        == "model.activation=swish: must be one of sigmoid, tanh, relu, leaky_relu, elu, gelu"
    )


def test_cnn_takes_per_block_settings_and_sizes_its_head_by_a_dry_pass():
    net = build(
        "model=cnn",
        "model.channels=[8,16,4]",
        "model.kernel_size=[5,3,3]",
        "model.stride=[1,2,1]",
        "model.padding=[2,1,0]",
        "model.pooling=[max,avg,none]",
        "model.batch_norm=[true,false,true]",
        "model.dropout=[0.1,0,0.2]",
        "model.activation=[relu,tanh,elu]",
        "model.head_hidden=0",
    )
    b1, b2, b3 = net.features
    assert [type(m) for m in b1] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d, nn.Dropout2d]
    assert [type(m) for m in b2] == [nn.Conv2d, nn.Tanh, nn.AvgPool2d]
    assert [type(m) for m in b3] == [nn.Conv2d, nn.BatchNorm2d, nn.ELU, nn.Dropout2d]
    assert (b1[0].kernel_size, b2[0].stride, b2[0].padding, b3[0].padding) == ((5, 5), (2, 2), (1, 1), (0, 0))
    assert b1[0].bias is None and b2[0].bias is not None, "a conv before batch norm needs no bias"
    # 28 -> pool 14 -> stride 2: 7 -> pool 4 -> 3x3 conv, no padding: 2; 4 channels * 2 * 2 = 16 inputs to the head
    assert net.head[-1].in_features == 16
    assert net(torch.randn(3, 1, 28, 28)).shape == (3, 10)


def test_a_list_of_kernel_sizes_sets_the_first_block_too_and_one_value_leaves_it_to_first_kernel_size():
    def kernels(*overrides):
        return [block[0].kernel_size[0] for block in build("model=cnn", *overrides).features]

    assert kernels() == [5, 3, 3], "the default CNN: a 5x5 first kernel, then 3x3 ones"
    assert kernels("model.kernel_size=[3,3,3]") == [3, 3, 3]
    assert kernels("model.kernel_size=7") == [5, 7, 7]
    assert kernels("model.kernel_size=3", "model.first_kernel_size=null") == [3, 3, 3]


def test_cnn_checks_its_lists_and_the_shrinking_feature_map():
    assert build_error("model=cnn", "model.channels=[8,8,8]", "model.kernel_size=[3,5]").startswith(
        "model.kernel_size=[3, 5]: must be one value or a list of 3, one per block"
    )
    message = build_error(
        "model=cnn",
        "model.channels=[4,4,4,4,4]",
        "model.kernel_size=3",
        "model.first_kernel_size=null",
        "model.stride=1",
        "model.pooling=max",
        "model.padding=0",
        in_shape=(1, 8, 8),
    )
    assert message.startswith("model.channels=[4, 4, 4, 4, 4]: the feature map of a 8x8 input shrinks to nothing in block 3")
    with pytest.raises(ConfigError, match="model=cnn: needs images"):
        CNN(in_shape=(2,), num_classes=2)


def test_lenet5_is_the_classic_network_at_any_image_size():
    net = build("model=lenet5", in_shape=(1, 32, 32))
    assert count_parameters(net) == (61_706, 61_706)
    assert isinstance(net.features[1], nn.Tanh) and isinstance(net.features[2], nn.AvgPool2d)
    mnist = build("model=lenet5")
    assert mnist.features[0].padding == (2, 2) and mnist.resize is None, "28x28 is padded to 32x32, as for MNIST"
    digits = LeNet5(in_shape=(1, 8, 8), num_classes=10)
    assert digits.resize == 32
    for net, shape in ((mnist, (1, 28, 28)), (digits, (1, 8, 8)), (build("model=lenet5", in_shape=(3, 32, 32)), (3, 32, 32))):
        assert net(torch.randn(2, *shape)).shape == (2, 10)


def tiny_resnet(**kwargs) -> TorchvisionModel:
    torch.manual_seed(0)
    return TorchvisionModel(in_shape=(1, 16, 16), num_classes=3, name="resnet18", **kwargs)


def test_freeze_backbone_trains_only_the_new_head_and_leaves_the_backbone_bit_identical():
    model = build("model=resnet18", "model.freeze_backbone=true", in_shape=(1, 16, 16), num_classes=3)
    assert isinstance(model.net.fc, nn.Linear) and model.net.fc.out_features == 3, "head replaced for 3 classes"
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert [id(p) for p in trainable] == [id(p) for p in model.net.fc.parameters()]
    backbone = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("net.fc.")}
    assert len(backbone) == len(model.state_dict()) - 2
    head = model.net.fc.weight.detach().clone()
    optimizer = torch.optim.SGD(trainable, lr=0.1, momentum=0.9)
    model.train()
    nn.functional.cross_entropy(model(torch.randn(8, 1, 16, 16)), torch.randint(0, 3, (8,))).backward()
    optimizer.step()
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in backbone.items()), "weights and batch-norm statistics unchanged"
    assert not torch.equal(model.net.fc.weight, head)


def test_torchvision_model_by_name_with_grey_small_images_and_resize():
    model = build("model=torchvision", "model.name=resnet34", in_shape=(1, 8, 8), num_classes=4)
    assert model.net.fc.out_features == 4 and model.grey
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 4)
    # squeezenet's head is a 1x1 conv, and 8x8 images are too small for it without a resize.
    message = build_error("model=torchvision", "model.name=squeezenet1_1", in_shape=(1, 8, 8))
    assert message.startswith("model.resize=null: squeezenet1_1 cannot take 8x8 images") and message.endswith("e.g. 224")
    squeeze = build("model=torchvision", "model.name=squeezenet1_1", "model.resize=64", in_shape=(1, 8, 8), num_classes=4)
    assert squeeze(torch.randn(2, 1, 8, 8)).shape == (2, 4)
    assert build_error("model=torchvision", "model.name=resnet19", in_shape=(1, 8, 8)).startswith(
        "model.name=resnet19: must be a torchvision classification model; did you mean 'resnet18'"
    )


def test_weights_from_a_local_file(tmp_path):
    import torchvision

    torch.manual_seed(1)
    source = torchvision.models.resnet18()
    torch.save(source.state_dict(), tmp_path / "resnet18.pth")
    model = tiny_resnet(weights=str(tmp_path / "resnet18.pth"))
    assert torch.equal(model.net.conv1.weight, source.conv1.weight)
    assert model.fresh_modules() is model.net.fc, "an initializer may only touch the new head"
    with pytest.raises(ConfigError, match="model.weights=.*missing.pth: must be none, default, or the path"):
        tiny_resnet(weights=str(tmp_path / "missing.pth"))
    torch.save({"not": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ConfigError, match="model.weights=.*other.pth: is not a state dict of torchvision's resnet18"):
        tiny_resnet(weights=str(tmp_path / "other.pth"))


def test_default_weights_offline_say_how_to_supply_a_file(tmp_path, monkeypatch):
    # Offline, made real without a network: an empty hub cache and a proxy on a port nothing listens on.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(var, f"http://127.0.0.1:{port}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    with pytest.raises(DlrunError) as err:
        tiny_resnet(weights="default")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("model.weights=default: cannot download resnet18's pretrained weights")
    assert "model.weights=/path/to/resnet18-f37072fd.pth" in message
    assert f"{tmp_path}/hub/checkpoints/" in message
    assert not any((tmp_path / "hub" / "checkpoints").glob("*.pth"))


@pytest.mark.parametrize("model", ["mlp", "cnn", "lenet5", "resnet18"])
def test_a_binary_head_has_one_output_and_needs_two_classes(model):
    with torch.device("meta"):  # shapes only
        net = build(f"model={model}", "model.binary_head=true", in_shape=(3, 32, 32), num_classes=2)
        assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 1)
    message = build_error(f"model={model}", "model.binary_head=true", in_shape=(3, 32, 32), num_classes=10)
    assert message.startswith("model.binary_head=true: is for two classes; the dataset has 10")
