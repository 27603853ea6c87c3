"""The pytorch/examples MNIST recipe (mnist/main.py), from its published description, on the CPU: its Net (two 3x3
convs of 32 and 64 channels, max-pool, dropout, a 128-unit layer), Adadelta at lr 1.0 with StepLR gamma 0.7,
batches of 64 through torchvision's MNIST, ToTensor and Normalize and a DataLoader, a test pass after each epoch.

    python scripts/examples_mnist.py ROOT MAX_EPOCHS

Stops at the first epoch whose test accuracy reaches 99.0%, or after MAX_EPOCHS (its own default is 14); prints one
line per epoch, `epoch N SECONDS ACCURACY`. scripts/bench.py times it, whole process, to 99%."""

import sys
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.lr_scheduler import StepLR
from torchvision import datasets, transforms


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(self.dropout1(x), 1)
        x = self.dropout2(F.relu(self.fc1(x)))
        return F.log_softmax(self.fc2(x), dim=1)


def main() -> None:
    root, max_epochs = sys.argv[1], int(sys.argv[2])
    torch.manual_seed(1)
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
    train = torch.utils.data.DataLoader(datasets.MNIST(root, train=True, transform=transform), batch_size=64, shuffle=True)
    test = torch.utils.data.DataLoader(datasets.MNIST(root, train=False, transform=transform), batch_size=1000)
    model = Net()
    optimizer = torch.optim.Adadelta(model.parameters(), lr=1.0)
    scheduler = StepLR(optimizer, step_size=1, gamma=0.7)
    for epoch in range(1, max_epochs + 1):
        start = time.perf_counter()
        model.train()
        for data, target in train:
            optimizer.zero_grad()
            F.nll_loss(model(data), target).backward()
            optimizer.step()
        model.eval()
        correct = 0
        with torch.no_grad():
            for data, target in test:
                correct += model(data).argmax(1).eq(target).sum().item()
        scheduler.step()
        accuracy = correct / len(test.dataset)
        print(f"epoch {epoch} {time.perf_counter() - start:.3f} {accuracy:.4f}", flush=True)
        if accuracy >= 0.99:
            break


if __name__ == "__main__":
    main()
