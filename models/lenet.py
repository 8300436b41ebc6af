"""The two MNIST reference networks of the compression literature, as torch modules.

Both take `input` float32 [N, 1, 28, 28] (pixels in [0, 1]) and return `logits` [N, 10].
Layers are plain Linear/Conv2d with bias so the ONNX export holds Gemm/Conv nodes whose
weights are ordinary initializers named after the layer (`fc1.weight`, `conv2.bias`).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

logger = logging.getLogger(__name__)

INPUT_NAME = "input"
OUTPUT_NAME = "logits"


class LeNet300100(nn.Module):
    """LeNet-300-100: fully connected 784-300-100-10 with ReLU (266,610 parameters)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(28 * 28, 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, 10)

    def forward(self, images):
        hidden = torch.relu(self.fc1(torch.flatten(images, 1)))
        hidden = torch.relu(self.fc2(hidden))
        return self.fc3(hidden)


class LeNet5Caffe(nn.Module):
    """LeNet-5 as in Caffe's example (431,080 parameters).

    conv 20@5x5 -> maxpool 2 -> conv 50@5x5 -> maxpool 2 -> flatten -> fc 500 -> ReLU -> fc 10.
    As in Caffe there is no nonlinearity after the convolutions.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 20, kernel_size=5)
        self.conv2 = nn.Conv2d(20, 50, kernel_size=5)
        self.fc1 = nn.Linear(50 * 4 * 4, 500)
        self.fc2 = nn.Linear(500, 10)

    def forward(self, images):
        features = nn.functional.max_pool2d(self.conv1(images), 2)
        features = nn.functional.max_pool2d(self.conv2(features), 2)
        hidden = torch.relu(self.fc1(torch.flatten(features, 1)))
        return self.fc2(hidden)


MODELS: dict[str, type[nn.Module]] = {"lenet300": LeNet300100, "lenet5": LeNet5Caffe}
