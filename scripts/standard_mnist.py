"""The standard PyTorch MNIST loop, the baseline `make bench` times dlrun against as a whole process.

    python scripts/standard_mnist.py ROOT [--model cnn|mlp] [--epochs 1] [--seed 1]

ROOT holds MNIST/raw with the four plain (unzipped) IDX files that torchvision's MNIST reads.
torchvision's MNIST with ToTensor and Normalize, a DataLoader in batches of 64, then a test pass:
- cnn: the classic tutorial's CNN (two 5x5 conv layers of 16 and 32 channels, each with ReLU and a
  2x2 max-pool, then one Linear), trained with Adam at lr 0.001, as that tutorial has it;
- mlp: the course's 784-100-10 net (ReLU), trained with plain SGD at lr 0.01.
Prints one line per epoch and a last line of JSON: {"epoch_s": [...], "test_accuracy": ...}.
"""

import argparse
import json
import time

import torch
from torch import nn
from torchvision import datasets, transforms


class TutorialCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.fc = nn.Linear(32 * 7 * 7, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.features(x), 1))


def course_mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 100), nn.ReLU(), nn.Linear(100, 10))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="folder holding MNIST/raw with the plain IDX files")
    parser.add_argument("--model", choices=("cnn", "mlp"), default="cnn")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
    train_set = datasets.MNIST(args.root, train=True, transform=transform)
    test_set = datasets.MNIST(args.root, train=False, transform=transform)
    train_loader = torch.utils.data.DataLoader(train_set, batch_size=64, shuffle=True)
    test_loader = torch.utils.data.DataLoader(test_set, batch_size=1000)
    model = TutorialCNN() if args.model == "cnn" else course_mlp()
    if args.model == "cnn":
        optimizer = torch.optim.Adam(model.parameters(), lr=0.001)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loss_fn = nn.CrossEntropyLoss()

    epoch_times = []
    for epoch in range(1, args.epochs + 1):
        start = time.perf_counter()
        model.train()
        for images, labels in train_loader:
            optimizer.zero_grad()
            loss_fn(model(images), labels).backward()
            optimizer.step()
        epoch_times.append(time.perf_counter() - start)
        print(f"epoch {epoch} {epoch_times[-1]:.3f} s", flush=True)

    model.eval()
    correct = 0
    with torch.no_grad():
        for images, labels in test_loader:
            correct += (model(images).argmax(1) == labels).sum().item()
    accuracy = correct / len(test_set)
    print(json.dumps({"model": args.model, "epoch_s": epoch_times, "test_accuracy": accuracy}))


if __name__ == "__main__":
    main()
