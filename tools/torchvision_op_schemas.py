"""Lets PyPI's torchvision import next to a CPU-only torch (the vLLM-on-CPU test environment).

PyPI's torchvision wheels are CUDA builds: their compiled ops cannot load
beside torch's CPU build, and there is no CPU torchvision on PyPI (it lives on
PyTorch's own index, which this machine cannot reach). vLLM's Qwen2.5-VL path
needs only torchvision's pure-Python transforms, but `import torchvision`
registers fake kernels for `torchvision::nms` and `torchvision::qnms`
unconditionally and fails when the ops are missing. This hook declares those
two schemas just before torchvision is first imported; nothing else changes,
and the detection ops stay unavailable.

`make test-vllm-cpu` installs it (a .pth file) only where `import torchvision`
fails; with a CPU torchvision from PyTorch's index it is not needed.
"""

from __future__ import annotations

import sys

_LIBRARIES: list = []  # the schemas live as long as their Library object


class DeclareTorchvisionOps:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name == "torchvision":
            sys.meta_path.remove(DeclareTorchvisionOps)
            import torch

            library = torch.library.Library("torchvision", "FRAGMENT")
            for op in ("nms", "qnms"):
                library.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            _LIBRARIES.append(library)
        return None  # the normal import goes on


def install() -> None:
    if DeclareTorchvisionOps not in sys.meta_path:
        sys.meta_path.insert(0, DeclareTorchvisionOps)
