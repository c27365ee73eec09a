"""Tests of device choice: never a silent fall-back."""

from __future__ import annotations

import pytest
import torch

from napari_unet.core.device import available_devices, describe_device, select_device


def test_cpu() -> None:
    assert select_device("cpu") == torch.device("cpu")
    assert select_device(torch.device("cpu")) == torch.device("cpu")
    n = torch.get_num_threads()
    assert describe_device("cpu") == f"CPU, {n} thread{'s' if n != 1 else ''}"


def test_auto_picks_cuda_then_mps_then_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr("napari_unet.core.device._mps_available", lambda: False)
    assert select_device("auto") == torch.device("cpu")
    monkeypatch.setattr("napari_unet.core.device._mps_available", lambda: True)
    assert select_device("auto") == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert select_device("AUTO") == torch.device("cuda", 0)


def test_cuda_description(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: "NVIDIA H100 80GB HBM3")
    assert select_device("cuda:1") == torch.device("cuda", 1)
    assert describe_device(torch.device("cuda", 1)) == "NVIDIA H100 80GB HBM3 (cuda:1)"
    with pytest.raises(ValueError, match="only 2 CUDA device"):
        select_device("cuda:2")
    assert available_devices()[:3] == ["auto", "cuda:0", "cuda:1"]


def test_absent_devices_are_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr("napari_unet.core.device._mps_available", lambda: False)
    with pytest.raises(ValueError, match="CUDA is not available"):
        select_device("cuda")
    with pytest.raises(ValueError, match="MPS is not available"):
        select_device("mps")
    assert available_devices() == ["auto", "cpu"]


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "", "tpu"])
def test_unknown_names(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    with pytest.raises(ValueError, match="device"):
        select_device(name)
