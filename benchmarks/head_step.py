""" How far one SGD step moves each head's output at initialization, relative to one Linear layer (1fc)

The from-scratch studies of docs/evidence.md compare heads at one learning rate. A head whose first step moves the
output further learns faster in a short schedule, whatever its structure. This measures, on a batch of Fashion-MNIST
training images and a trunk at initialization (its BatchNorm in training mode, as in the first training step), the
mean square of the pooled feature and the change of the output after one plain SGD step (lr 1) on the head alone,
over several head initializations:

    python benchmarks/head_step.py --model lcnet_050
"""
import argparse

import numpy as np
import timm
import torch
import torch.nn.functional as F

import timm_ssm  # noqa: F401  registers <arch>_ssm
from timm_ssm.fashion_mnist import MEAN, STD, prepare_fashion_mnist

HEADS = {'1fc': dict(num_splits=1, split=False), '4fc': dict(num_splits=4, split=False), 'ssm': dict(num_splits=4),
         'bn1fc': dict(num_splits=1, norm_all=True)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--model', default='lcnet_050')
    parser.add_argument('--images', type=int, default=256)
    parser.add_argument('--seeds', type=int, default=5, help='head initializations to average over')
    args = parser.parse_args()
    dataset = timm.data.create_dataset('torch/fashion_mnist', root=str(prepare_fashion_mnist()), split='train')
    images = np.stack([np.asarray(dataset[i][0], dtype=np.float32) / 255 for i in range(args.images)])
    x = (torch.from_numpy(images)[:, None] - MEAN[0]) / STD[0]
    y = torch.tensor([dataset[i][1] for i in range(args.images)])
    torch.manual_seed(0)
    with torch.no_grad():
        feature = timm.create_model(args.model, in_chans=1, num_classes=0).train()(x)
    print(f'{args.model}: pooled feature C = {feature.shape[1]}, mean x^2 = {feature.pow(2).mean():.3f}')
    moves = {name: [] for name in HEADS}
    for seed in range(args.seeds):
        for name, kwargs in HEADS.items():
            torch.manual_seed(seed)
            head = timm.create_model(f'{args.model}_ssm', in_chans=1, num_classes=10, **kwargs).train().get_classifier()
            before = head(feature)
            params = list(head.parameters())
            grads = torch.autograd.grad(F.cross_entropy(before, y), params)
            with torch.no_grad():
                for p, g in zip(params, grads):
                    p -= g
                moves[name].append((head(feature) - before).norm().item())
    for name, move in moves.items():
        ratio = np.array(move) / np.array(moves['1fc'])
        print(f'{name:6s} output change of one head step: {ratio.mean():.2f} ± {ratio.std(ddof=1):.2f} x one Linear '
              f'(1fc), over {args.seeds} head initializations')

if __name__ == '__main__':
    main()
