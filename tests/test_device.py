"""lenet.device: devices by name, and what the machine is."""

from __future__ import annotations

import pytest
import torch

from lenet.device import cpu_name, device_name, resolve_device
from lenet.errors import UsageError


def test_device_names_are_checked():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(UsageError, match="not a device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="CUDA is not available here"):
            resolve_device("cuda")


def test_the_cpu_is_named_with_its_cores():
    assert device_name(torch.device("cpu")) == cpu_name()
    assert cpu_name()
