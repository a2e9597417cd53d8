"""One device rule for every torch stage (mmalign.devices)."""

from __future__ import annotations

import pytest
import torch

from mmalign import devices
from mmalign.devices import DeviceError, torch_device


@pytest.fixture(params=[True, False], ids=["gpu", "no_gpu"])
def gpu(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: request.param)
    return request.param


def test_auto_is_cuda_when_there_is_a_gpu_else_the_cpu(gpu: bool) -> None:
    assert torch_device("auto", "embed.device") == torch.device("cuda" if gpu else "cpu")


def test_cpu_is_the_cpu_either_way(gpu: bool) -> None:
    assert torch_device("cpu", "learn.device") == torch.device("cpu")


def test_cuda_with_a_gpu_is_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert torch_device("cuda", "learn.device") == torch.device("cuda")


@pytest.mark.parametrize("key", ["embed.device", "learn.device"])
def test_cuda_without_a_gpu_is_an_error_naming_the_key(
    key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match=rf"^{key} is 'cuda' but torch sees no GPU; use 'auto'"):
        torch_device("cuda", key)


def test_embed_and_learn_share_the_one_rule() -> None:
    import mmalign.embed as embed
    import mmalign.learn as learn
    import mmalign.learn.common as common
    from mmalign.embed import EmbedOptions

    assert embed.torch_device is devices.torch_device
    assert learn.torch_device is devices.torch_device
    assert not hasattr(common, "torch_device")
    assert not hasattr(EmbedOptions, "torch_device")
