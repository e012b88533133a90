"""CNN backbone: input preparation, embedding shape, weights from files and the hub cache, offline fallback."""

from __future__ import annotations

import ipaddress
import socket
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from safetensors.torch import save_file

from hybridcxr.classify import backbone as bb
from hybridcxr.classify.backbone import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Backbone,
    BackboneWeightsWarning,
    build_backbone,
    embed,
    to_backbone_input,
)
from hybridcxr.errors import InputError

MEAN = np.array(IMAGENET_MEAN).reshape(3, 1, 1)
STD = np.array(IMAGENET_STD).reshape(3, 1, 1)


@pytest.fixture()
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Block every non-loopback connection and DNS look-up; returns the list of attempts."""
    attempts: list[object] = []
    real_connect = socket.socket.connect

    def guarded_connect(self: socket.socket, address: object) -> None:
        host = address[0] if isinstance(address, tuple) else None
        if host is not None and not ipaddress.ip_address(host).is_loopback:
            attempts.append(address)
            raise ConnectionRefusedError(f"test forbids network access to {address}")
        return real_connect(self, address)

    def guarded_lookup(host: object, *args: object, **kwargs: object) -> list:
        attempts.append(("dns", host))
        raise socket.gaierror(f"test forbids DNS look-ups of {host}")

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket, "getaddrinfo", guarded_lookup)
    return attempts


@pytest.fixture()
def empty_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A torch hub cache of our own (empty), so the user's cache never decides a test."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    return tmp_path / "torch" / "hub" / "checkpoints"


@pytest.fixture(scope="module")
def resnet() -> Backbone:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BackboneWeightsWarning)
        torch.manual_seed(0)
        return build_backbone("resnet18", weights=None, input_size=96)  # small inputs keep the tests fast


def _random_images(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.random((64, 64), dtype=np.float32), rng.random((48, 64)).astype(np.float64)]


# ------------------------------------------------------------------------------------------------- input


@pytest.mark.parametrize("as_torch", [False, True])
def test_grey_square_becomes_normalised_three_channels(as_torch: bool) -> None:
    pixels = np.full((64, 64), 0.25, dtype=np.float32)
    x = to_backbone_input(torch.from_numpy(pixels) if as_torch else pixels)
    assert isinstance(x, torch.Tensor) and x.shape == (1, 3, 224, 224) and x.dtype == torch.float32
    expected = (0.25 - MEAN) / STD  # channel c holds (pixel - mean[c]) / std[c]
    assert np.allclose(x[0].numpy(), np.broadcast_to(expected, (3, 224, 224)), atol=1e-5)
    assert not np.allclose(x[0, 0].numpy(), x[0, 1].numpy())  # each channel has its own mean and std


def test_letterbox_keeps_aspect_ratio_and_pads_with_black() -> None:
    pixels = np.full((32, 64), 1.0, dtype=np.float32)  # landscape: scaled to 112 x 224, centred
    x = to_backbone_input(pixels)[0].numpy()
    black, white = (0.0 - MEAN[:, 0, 0]) / STD[:, 0, 0], (1.0 - MEAN[:, 0, 0]) / STD[:, 0, 0]
    assert np.allclose(x[:, :56, :], black[:, None, None], atol=1e-5)
    assert np.allclose(x[:, 168:, :], black[:, None, None], atol=1e-5)
    assert np.allclose(x[:, 56:168, :], white[:, None, None], atol=1e-5)
    portrait = to_backbone_input(np.ones((64, 32), dtype=np.float32), size=64)[0].numpy()
    assert np.allclose(portrait[:, :, :16], black[:, None, None], atol=1e-5)
    assert np.allclose(portrait[:, :, 16:48], white[:, None, None], atol=1e-5)


def test_batches_and_channel_axis() -> None:
    batch = np.random.default_rng(0).random((2, 40, 40)).astype(np.float32)
    a = to_backbone_input(batch, size=40)
    b = to_backbone_input(batch[:, None], size=40)
    assert a.shape == (2, 3, 40, 40) and torch.equal(a, b)
    assert torch.allclose(to_backbone_input(batch[1], size=40)[0], a[1])
    readonly = batch[0].copy()
    readonly.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(to_backbone_input(readonly, size=40), a[:1])


@pytest.mark.parametrize(("pixels", "match"), [
    (np.zeros((8, 8), dtype=np.uint8), "float"),
    (np.zeros((8, 8, 3), dtype=np.float32), "RGB"),
    (np.zeros((1, 3, 8, 8), dtype=np.float32), "grey"),
    (np.full((8, 8), 255.0, dtype=np.float32), r"\[0, 1\]"),
    (np.full((8, 8), np.nan, dtype=np.float32), r"\[0, 1\]"),
])
def test_bad_pixels_are_refused(pixels: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        to_backbone_input(pixels)


# ------------------------------------------------------------------------------------------------- embed


def test_embedding_shape_and_determinism(resnet: Backbone) -> None:
    images = _random_images()
    resnet.train()
    out = embed(resnet, images)
    assert out.shape == (2, 512) and out.dtype == np.float32 and np.isfinite(out).all()
    assert resnet.training  # the caller's mode is restored
    resnet.eval()
    assert np.allclose(embed(resnet, images, batch_size=1), out, atol=1e-5)
    with torch.inference_mode():
        direct = resnet(to_backbone_input(images[1], size=resnet.input_size)).numpy()
    assert np.allclose(direct[0], out[1], atol=1e-5)
    assert not np.allclose(out[0], out[1])
    assert embed(resnet, []).shape == (0, 512)


def test_densenet_embedding_is_1024_wide() -> None:
    with pytest.warns(BackboneWeightsWarning):
        densenet = build_backbone("densenet121")
    assert densenet.dim == 1024
    assert embed(densenet, _random_images()[:1], size=64).shape == (1, 1024)


def test_fingerprint_tracks_the_weights(resnet: Backbone) -> None:
    fingerprint = resnet.fingerprint()
    assert len(fingerprint) == 16 and int(fingerprint, 16) >= 0
    assert resnet.fingerprint() == fingerprint
    clone = Backbone("resnet18", input_size=resnet.input_size)
    clone.load_state_dict(resnet.state_dict())
    assert clone.fingerprint() == fingerprint
    clone.input_size = 224  # other inputs, other embeddings
    assert clone.fingerprint() != fingerprint
    clone.input_size = resnet.input_size
    with torch.no_grad():
        clone.body.layer4[1].bn2.running_var[0] += 1e-3
    assert clone.fingerprint() != fingerprint


# ----------------------------------------------------------------------------------------------- weights


def test_random_init_warns_once_and_never_touches_the_network(no_network: list[object]) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        backbone = build_backbone("resnet18", weights=None)
    assert [type(w.message) for w in caught] == [BackboneWeightsWarning]
    message = str(caught[0].message)
    assert "random" in message and "weights=" in message and "resnet18-f37072fd.pth" in message
    assert caught[0].filename == __file__  # points at the caller
    assert backbone.weights_source == "random" and not backbone.training
    assert no_network == []


def test_imagenet_offline_without_cache_falls_back_without_network(
        no_network: list[object], empty_hub: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("YOLO_OFFLINE", raising=False)
    monkeypatch.setenv("HYBRIDCXR_OFFLINE", "1")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        backbone = build_backbone("resnet18", weights="imagenet")
    assert [type(w.message) for w in caught] == [BackboneWeightsWarning]
    assert "HYBRIDCXR_OFFLINE" in str(caught[0].message)
    assert str(empty_hub / "resnet18-f37072fd.pth") in str(caught[0].message)
    assert backbone.weights_source == "random"
    assert no_network == []


def test_imagenet_unreachable_falls_back_quickly(no_network: list[object], empty_hub: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    for var in bb.OFFLINE_ENV:
        monkeypatch.delenv(var, raising=False)
    # DNS "works" (a public address) so the probe gets as far as connect, which the fixture blocks
    monkeypatch.setattr(socket, "getaddrinfo",
                        lambda *a, **k: [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.215.14", 443))])
    downloads: list[str] = []
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", lambda url, *a, **k: downloads.append(url))
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        backbone = build_backbone("resnet18", weights="imagenet")
    assert time.perf_counter() - start < bb.PROBE_TIMEOUT_S + 1.5
    assert [type(w.message) for w in caught] == [BackboneWeightsWarning]
    assert "cannot be reached" in str(caught[0].message)
    assert backbone.weights_source == "random" and downloads == []
    assert no_network and all(a == ("93.184.215.14", 443) for a in no_network)  # blocked, never passed


def test_imagenet_weights_from_the_hub_cache(no_network: list[object], empty_hub: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    for var in bb.OFFLINE_ENV:
        monkeypatch.delenv(var, raising=False)
    torch.manual_seed(1)
    reference = torchvision.models.resnet18(weights=None)  # a full torchvision model, fc included
    empty_hub.mkdir(parents=True)
    torch.save(reference.state_dict(), empty_hub / "resnet18-f37072fd.pth")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        backbone = build_backbone("resnet18", weights="imagenet")
        from_file = build_backbone("resnet18", weights=empty_hub / "resnet18-f37072fd.pth")
    assert backbone.weights_source == "imagenet"
    assert torch.equal(backbone.body.conv1.weight, reference.conv1.weight)
    assert backbone.fingerprint() == from_file.fingerprint()
    assert no_network == []
    reference.fc = torch.nn.Identity()
    image = torch.rand(1, 3, 64, 64)
    with torch.inference_mode():
        assert torch.allclose(backbone(image), reference.eval()(image))


def test_weights_from_files(tmp_path: Path, resnet: Backbone) -> None:
    state = resnet.state_dict()  # our own keys ("body.conv1.weight"), no classifier
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "resnet.safetensors")
    torch.save({f"module.{k.removeprefix('body.')}": v for k, v in state.items()}, tmp_path / "ddp.pth")
    torch.save({"state_dict": dict(state)}, tmp_path / "nested.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in ("resnet.safetensors", "ddp.pth", "nested.pt"):
            loaded = build_backbone("resnet18", weights=str(tmp_path / name), input_size=resnet.input_size)
            assert loaded.fingerprint() == resnet.fingerprint(), name
            assert loaded.weights_source == str(tmp_path / name)


def test_densenet_old_style_keys_load(tmp_path: Path) -> None:
    torch.manual_seed(2)
    reference = torchvision.models.densenet121(weights=None)
    # torchvision's published DenseNet files spell "norm1" as "norm.1" (and so on) and predate num_batches_tracked
    old = {k.replace("norm1", "norm.1").replace("conv2", "conv.2"): v for k, v in reference.state_dict().items()
           if not k.endswith("num_batches_tracked")}
    assert any("denselayer1.norm.1.weight" in k for k in old)
    torch.save(old, tmp_path / "densenet121-old.pth")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = build_backbone("densenet121", weights=tmp_path / "densenet121-old.pth")
    block = loaded.body.features.denseblock1.denselayer1
    assert torch.equal(block.norm1.weight, reference.features.denseblock1.denselayer1.norm1.weight)
    assert torch.equal(block.conv2.weight, reference.features.denseblock1.denselayer1.conv2.weight)


def test_bad_weights_raise_input_errors_naming_the_file(tmp_path: Path, resnet: Backbone) -> None:
    missing = tmp_path / "nowhere.pth"
    with pytest.raises(InputError, match="no such weights file") as err:
        build_backbone("resnet18", weights=missing)
    assert err.value.path == str(missing)

    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file at all")
    with pytest.raises(InputError, match="cannot read weights") as err:
        build_backbone("resnet18", weights=garbage)
    assert err.value.path == str(garbage)

    pickled = tmp_path / "pickled.pth"
    torch.save({"model": Path("a")}, pickled)  # weights_only refuses arbitrary objects
    with pytest.raises(InputError, match="cannot read weights"):
        build_backbone("resnet18", weights=pickled)

    other = tmp_path / "densenet.safetensors"
    save_file({"features.conv0.weight": torch.zeros(64, 3, 7, 7)}, other)
    with pytest.raises(InputError, match="not resnet18 weights; missing") as err:
        build_backbone("resnet18", weights=other)
    assert err.value.path == str(other) and "unexpected: features.conv0.weight" in str(err.value)

    shapes = tmp_path / "shapes.pth"
    state = {k.removeprefix("body."): v for k, v in resnet.state_dict().items()}
    state["conv1.weight"] = torch.zeros(64, 1, 7, 7)
    torch.save(state, shapes)
    with pytest.raises(InputError, match="wrong shape: conv1.weight"):
        build_backbone("resnet18", weights=shapes)

    with pytest.raises(ValueError, match="unknown backbone 'vgg16'"):
        build_backbone("vgg16")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------ torchxrayvision backbones

XRV = ["xrv-densenet121-res224-all", "xrv-resnet50-res512-all"]


class _Evil:
    def __reduce__(self):
        return (print, ("a pickle may name any callable",))


@pytest.fixture()
def xrv_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty home, so torchxrayvision's cache folder (``~/.torchxrayvision/models_data``) is ours alone."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path / "home" / ".torchxrayvision" / "models_data"


def test_xrv_scaling_is_one_channel_in_plus_minus_1024() -> None:
    pixels = np.zeros((20, 40), dtype=np.float32)
    pixels[:, :20] = 1.0
    x = to_backbone_input(pixels, size=40, scaling="xrv")
    assert x.shape == (1, 1, 40, 40)
    assert float(x.min()) == -bb.XRV_RANGE and float(x.max()) == bb.XRV_RANGE  # black (and padding), white
    assert float(x[0, 0, 0, 0]) == -bb.XRV_RANGE  # the letterbox padding is black too
    assert to_backbone_input(pixels, size=40).shape == (1, 3, 40, 40)  # torchvision's CNNs are unchanged


@pytest.mark.parametrize("name", XRV)
def test_xrv_backbone_builds_offline_with_random_weights(name: str, no_network: list[object], xrv_home: Path,
                                                         tmp_path: Path) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        backbone = build_backbone(name, input_size=64, seed=0)
    assert [type(w.message) for w in caught] == [BackboneWeightsWarning]
    message = str(caught[0].message)
    assert "HYBRIDCXR_OFFLINE" in message and str(xrv_home) in message and caught[0].filename == __file__
    assert backbone.weights_source == "random" and backbone.scaling == "xrv"
    assert backbone.dim == {"xrv-densenet121-res224-all": 1024, "xrv-resnet50-res512-all": 2048}[name]
    assert backbone.prepare(np.ones((30, 30), dtype=np.float32)).shape == (1, 1, 64, 64)
    embedding = embed(backbone, _random_images())
    assert embedding.shape == (2, backbone.dim) and np.isfinite(embedding).all()
    backbone.save(tmp_path / "cnn.safetensors")  # what a classifier run keeps, loaded back without a warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = build_backbone(name, weights=tmp_path / "cnn.safetensors", input_size=64)
    with pytest.warns(BackboneWeightsWarning):
        other_seed = build_backbone(name, input_size=64, seed=1)
    assert again.fingerprint() == backbone.fingerprint() != other_seed.fingerprint()
    np.testing.assert_allclose(embed(again, _random_images()), embedding, rtol=1e-5, atol=1e-5)
    assert no_network == []


@pytest.mark.parametrize("legacy", [False, True])
def test_xrv_densenet_weights_from_its_cache_folder(legacy: bool, no_network: list[object], xrv_home: Path) -> None:
    """torchxrayvision's DenseNet file is a whole pickled model (legacy format for the published one)."""
    xrv = bb.import_xrv()
    torch.manual_seed(3)
    reference = xrv.models.DenseNet(weights=None)
    xrv_home.mkdir(parents=True)
    file = xrv_home / xrv.models.model_urls["densenet121-res224-all"]["weights_url"].rsplit("/", 1)[-1]
    torch.save(reference, file, _use_new_zipfile_serialization=not legacy)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        backbone = build_backbone("xrv-densenet121-res224-all", input_size=64)
    assert backbone.weights_source == "torchxrayvision"
    assert torch.equal(backbone.body.features.conv0.weight, reference.features.conv0.weight)
    reference.classifier = torch.nn.Identity()
    image = torch.rand(1, 1, 64, 64) * 2048 - 1024
    with torch.inference_mode():
        torch.testing.assert_close(backbone(image), reference.eval().features2(image))
    torch.save({"weights": _Evil()}, file, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(InputError, match="cannot read weights") as err:
        build_backbone("xrv-densenet121-res224-all")
    assert err.value.path == str(file)
    assert no_network == []


def test_xrv_resnet_weights_from_its_cache_folder(no_network: list[object], xrv_home: Path) -> None:
    """torchxrayvision's ResNet-50 file is a state_dict of torchvision's ResNet-50 with a one-channel stem."""
    xrv = bb.import_xrv()
    torch.manual_seed(4)
    reference = torchvision.models.resnet50(weights=None, num_classes=18)
    reference.conv1 = torch.nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    xrv_home.mkdir(parents=True)
    torch.save(reference.state_dict(),
               xrv_home / xrv.models.model_urls["resnet50-res512-all"]["weights_url"].rsplit("/", 1)[-1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        backbone = build_backbone("xrv-resnet50-res512-all", input_size=64)
    assert backbone.weights_source == "torchxrayvision" and torch.equal(backbone.body.conv1.weight,
                                                                        reference.conv1.weight)
    with pytest.raises(ValueError, match="no ImageNet weights"):
        build_backbone("xrv-resnet50-res512-all", weights="imagenet")
    assert no_network == []


def test_missing_torchxrayvision_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from hybridcxr.errors import ConfigError

    monkeypatch.setitem(sys.modules, "torchxrayvision", None)  # import fails as if not installed
    with pytest.raises(ConfigError, match=r"needs torchxrayvision.*pip install 'hybridcxr\[xrv\]'"):
        build_backbone("xrv-densenet121-res224-all")
    with pytest.warns(BackboneWeightsWarning):
        build_backbone("resnet18", weights=None, input_size=32)  # the others never import it
