"""The paper's SSM written plainly, one module per sub-classifier: the reference for tests and benchmarks."""
import torch.nn as nn
import torch.nn.functional as F


class ReferenceSSM(nn.Module):
    """The paper's SSM, one module per sub-classifier: F_i = F[:, :i*C/n]; BatchNorm + ReLU on the first n - 1
    (all n with norm_all); FC_i; output the mean."""

    def __init__(self, in_features, num_classes, num_splits=4, norm_all=False):
        super().__init__()
        group = in_features // num_splits
        self.widths = [group * (i + 1) for i in range(num_splits)]
        num_norm = num_splits if norm_all else num_splits - 1
        self.bns = nn.ModuleList([nn.BatchNorm1d(w) for w in self.widths[:num_norm]])
        self.fcs = nn.ModuleList([nn.Linear(w, num_classes) for w in self.widths])

    def forward_splits(self, x):
        outs = []
        for i, (width, fc) in enumerate(zip(self.widths, self.fcs)):
            out = x[:, :width]
            if i < len(self.bns):
                out = F.relu(self.bns[i](out))
            outs.append(fc(out))
        return outs

    def forward(self, x):
        return sum(self.forward_splits(x)) / len(self.fcs)
