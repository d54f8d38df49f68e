""" Grad-CAM per channel group of a Split-and-Share model

Paper: `Exploiting Features with Split-and-Share Module` - https://doi.org/10.3390/electronics11020235
(Lee et al., Electronics 2022), section 5, Figures 2 and 3.

For sub-classifier j of n, the Grad-CAM (Selvaraju et al., ICCV 2017) of the trunk's last feature map restricted to
channel group j for sub-classifier j's logit of the target class, then that of all channels for the averaged output.
"""
import argparse
import logging
import os
from itertools import chain, count
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from timm.data import create_transform, get_img_extensions
from timm.utils import setup_default_logging

from .files import RunError, atomic_write, write_error
from .runs import check_outputs, check_read, class_names, create_run_dataset, models_from_args, number_in, \
    resolve_device, run_data_config, run_parser, split_head

__all__ = ['feature_gradients', 'grad_cams', 'cam_grid', 'grid_stems', 'PANEL_PAD', 'main']

_logger = logging.getLogger(__name__)

PANEL_PAD = 8  # pixels between and around the panels of a grid


def _spatial_features(model: nn.Module, x: torch.Tensor) -> Tuple[torch.Tensor, bool]:
    """The trunk's last feature map (B, C, h, w) and whether the trunk gives it channels-last (NHWC), or a RunError."""
    feat = model.forward_features(x)
    trunk = getattr(model, 'trunk', model)
    if not isinstance(feat, torch.Tensor) or feat.ndim != 4:
        raise RunError(f'Grad-CAM needs a spatial feature map, but the trunk {type(trunk).__name__} gives shape '
                       f'{tuple(getattr(feat, "shape", ()))} (no map): use a convolutional trunk such as resnet50_ssm.')
    nhwc = getattr(trunk, 'output_fmt', 'NCHW') == 'NHWC'
    return feat.permute(0, 3, 1, 2) if nhwc else feat, nhwc


def feature_gradients(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    """The trunk's last feature map (B, C, h, w) of images `x`, the gradients (B, n + 1, C, h, w) of the `target`
    class's logit of each sub-classifier and then of the averaged output with respect to it, and the averaged logits."""
    with torch.no_grad():
        feat, nhwc = _spatial_features(model, x)
    feat = feat.detach().requires_grad_()
    head = split_head(model)
    with torch.enable_grad():
        trunk_feat = feat.permute(0, 2, 3, 1) if nhwc else feat  # as the trunk gives it
        if head is not None:
            pooled = model.trunk.forward_head(trunk_feat, pre_logits=True)
            if pooled.shape[-1] != feat.shape[1]:
                raise RunError(f'The head sees {pooled.shape[-1]} pooled features, but the last feature map has '
                               f'{feat.shape[1]} channels (layers between them): per-group Grad-CAM is not defined '
                               f'for this trunk; use one such as resnet50_ssm.')
            splits = head.forward_splits(pooled)  # (B, n, K)
            outputs = list(splits.unbind(1)) + [splits.mean(1)]
        else:
            outputs = [model.forward_head(trunk_feat)]
        rows = torch.arange(x.shape[0], device=x.device)
        grads = torch.stack([torch.autograd.grad(out[rows, target].sum(), feat, retain_graph=True)[0]
                             for out in outputs], 1)
    return feat.detach(), grads, outputs[-1].detach()


def grad_cams(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> Tuple[torch.Tensor, list, torch.Tensor]:
    """Grad-CAM of each channel group w.r.t. its sub-classifier, and of all channels w.r.t. the averaged output.

    Returns:
        Heat maps (B, n + 1, H, W) in [0, 1], each scaled to its own minimum and maximum, at the images' size; the
        channel range (first, last) of each map; the averaged output's logits (B, K).
    """
    feat, grads, logits = feature_gradients(model, x, target)
    channels, n = feat.shape[1], grads.shape[1] - 1
    group = channels // n if n else channels
    ranges = [(j * group, (j + 1) * group - 1) for j in range(n)] + [(0, channels - 1)]
    weights = grads.mean((3, 4))  # (B, n + 1, C)
    cams = torch.stack([F.relu((weights[:, j, first:last + 1, None, None] * feat[:, first:last + 1]).sum(1))
                        for j, (first, last) in enumerate(ranges)], 1)
    cams = F.interpolate(cams, size=x.shape[-2:], mode='bilinear', align_corners=False)
    # min-max scaling of each map, as the grad-cam package shows them; a map without spatial information (a 1x1
    # feature map, or values equal up to rounding) stays flat at 0 instead of stretching rounding noise to colours
    low, high = cams.flatten(2).amin(-1)[..., None, None], cams.flatten(2).amax(-1)[..., None, None]
    flat = (high - low <= 1e-4 * high.abs()) | (feat.shape[-2] * feat.shape[-1] == 1)
    cams = torch.where(flat, torch.zeros_like(cams), (cams - low) / (high - low + 1e-7))
    return cams, ranges, logits


def cam_grid(image: torch.Tensor, cams: torch.Tensor, titles: Sequence[Tuple[str, str]], header: str = '',
             panel: int = 224, alpha: float = 0.5) -> Image.Image:
    """One row of square panels of `panel` pixels, PANEL_PAD apart: the image as the model saw it ((C, H, W) in
    [0, 1]), then each heat map ((m, H, W) in [0, 1]) overlaid with weight `alpha`; each under its two `titles`."""
    from matplotlib import colormaps  # imported here: matplotlib takes a while to import
    image = image.float().cpu().clamp(0, 1)
    image = (image.expand(3, -1, -1) if image.shape[0] == 1 else image[:3]).permute(1, 2, 0).numpy()
    panels = [image] + [(1 - alpha) * image + alpha * colormaps['jet'](c.float().cpu().numpy())[..., :3] for c in cams]
    font, small = ImageFont.load_default(size=max(10, panel // 14)), ImageFont.load_default(size=max(9, panel // 18))
    line = max(12, panel // 12)
    top = PANEL_PAD + (line if header else 0) + 2 * line
    grid = Image.new('RGB', (len(panels) * (panel + PANEL_PAD) + PANEL_PAD, top + panel + PANEL_PAD), 'white')
    draw = ImageDraw.Draw(grid)
    if header:
        draw.text((PANEL_PAD, PANEL_PAD // 2), header, fill='black', font=small)
    for i, (p, (title, subtitle)) in enumerate(zip(panels, titles)):
        left = PANEL_PAD + i * (panel + PANEL_PAD)
        pixels = (p * 255).round().astype('uint8')
        grid.paste(Image.fromarray(pixels).resize((panel, panel), Image.BILINEAR), (left, top))
        draw.text((left + panel // 2, top - line - line // 2), title, fill='black', font=font, anchor='mm')
        draw.text((left + panel // 2, top - line // 2), subtitle, fill='dimgray', font=small, anchor='mm')
    return grid


def _inputs(args, model: nn.Module, run) -> Tuple[List[Tuple[str, Image.Image, Optional[int]]], Optional[list]]:
    """(name, image, ground-truth class or None) of each input image, and the data's class names."""
    if args.input is not None and os.path.isfile(args.input):
        try:
            with Image.open(args.input) as img:
                img.load()
        except OSError as e:
            raise RunError(f'{args.input} is not an image that Pillow can read ({e}): give an image file '
                           f'({", ".join(get_img_extensions())}) or a folder of them.') from e
        return [(os.path.splitext(os.path.basename(args.input))[0], img, None)], None
    if args.input is not None and not os.path.isdir(args.input):
        raise RunError(f'{args.input} is neither an image file nor a folder: give an image file or a folder.')
    folder = args.input is not None  # a folder of images, read as it is; class folders give the ground truth
    dataset = create_run_dataset(args.input or args.data_dir, model, run, dataset='' if folder else args.dataset,
                                 split=None if folder else args.split, class_map=args.class_map,
                                 download=args.dataset_download, labelled=not folder)
    count = min(args.num_images, len(dataset))
    stems = grid_stems([dataset.filename(i) for i in range(count)]) if folder else [f'{i:05d}' for i in range(count)]
    items = [(stem, *dataset[i]) for i, stem in enumerate(stems)]
    check_read(dataset)
    labelled = dataset.names is not None or bool(args.class_map)
    return [(stem, img, int(label) if labelled else None) for stem, img, label in items], dataset.names


def grid_stems(paths: Sequence[str]) -> List[str]:
    """One output name per input image: its path relative to the input folder with the folders joined by '_'
    (`cat/a.png` -> `cat_a`), and, where two paths give one name (`a/b_c.png`, `a_b/c.png`, `a/b_c.jpg`), the extension
    and then a number (`a_b_c_png`, `a_b_c_png_2`, `a_b_c_jpg`)."""
    stems = [os.path.splitext(p)[0].replace(os.sep, '_').replace('/', '_') for p in paths]
    stems = [f'{s}_{os.path.splitext(p)[1].lstrip(".")}' if stems.count(s) > 1 else s for s, p in zip(stems, paths)]
    names, given = [], set(stems)
    for stem in stems:  # numbered from 2, with a number that makes no other image's name
        candidates = chain([stem], (f'{stem}_{i}' for i in count(2)))
        names.append(next(n for n in candidates if n not in names and (n == stem or n not in given)))
    return names


def check_map_size(run, model: nn.Module, config):
    """Warn when the maps are drawn at another image size than the run was trained at (a model explains its predictions
    only where it makes them well) or on a last feature map below 4x4; a RunError when it is 1x1."""
    with torch.no_grad():
        x = torch.zeros(1, *config['input_size'], device=next(model.parameters()).device)
        (h, w), size = _spatial_features(model, x)[0].shape[2:], config['input_size'][1]
    fix = ('train the model at a size whose last map is at least 4x4 (the default run on 28 px images: with '
           '--model-kwargs output_stride=8), or draw the maps at a larger --img-size of a model trained at that size')
    if h == w == 1:
        raise RunError(f'The last feature map of the model is 1x1 at {size} px, so every heat map would be one flat '
                       f'colour: {fix}.')
    if min(h, w) < 4:
        _logger.warning(f'the last feature map is {h}x{w} at {size} px, so the maps are coarse: {fix}.')
    own = run_data_config(run, model)['input_size'][1:]
    if tuple(own) != tuple(config['input_size'][1:]):
        _logger.warning(f'the maps are drawn at {size} px, but {run.args.get("model", "the model")} was '
                        f'{"trained and evaluated" if run.trained else "pretrained"} at {own[0]} px: its predictions, '
                        f'and so its maps, may be wrong at this size (see its top-1 with python -m timm_ssm.evaluate '
                        f'--img-size {size}); leave out --img-size and --input-size.')


parser = argparse.ArgumentParser(
    prog='python -m timm_ssm.cam', parents=[run_parser],
    description='Grad-CAM per channel group of a Split-and-Share model (paper section 5): one PNG grid per image.')
parser.add_argument('input', nargs='?', help='an image, or a folder of images (class folders give the ground truth)')
parser.add_argument('--out', default='cam', metavar='DIR', help='output folder (default: cam)')
parser.add_argument('--overwrite', action='store_true', help='replace grids already in --out')
parser.add_argument('--model', '-m', nargs=1, metavar='NAME', help='model name, hf-hub:ORG/NAME or local-dir:DIR')
parser.add_argument('--checkpoint', nargs=1, default=[], metavar='RUN', help='train.py output folder or checkpoint')
parser.add_argument('--target-class', type=number_in(int, 0), help='class of the maps (ground truth, else prediction)')
parser.add_argument('--num-images', type=number_in(int, 1), default=16, metavar='N', help='at most N images (16)')
parser.add_argument('--panel', type=number_in(int, 16, 2048), default=224, metavar='PX', help='panel side (224 px)')
parser.add_argument('--alpha', type=number_in(float, 0, 1), default=0.5, help='heat map weight in the overlay (0.5)')


class _WriteError(RunError):
    """A grid that could not be written (a full disk)."""


def run(args) -> List[Tuple[str, int, int]]:
    """Write the grids the command line asks for; (path, target class, predicted class) of each."""
    device = resolve_device(args.device)
    ((run_, model),) = models_from_args(args, device)
    k = model.num_classes
    if args.target_class is not None and args.target_class >= k:
        raise RunError(f'--target-class {args.target_class} is outside the model\'s {k} classes: give 0..{k - 1}.')
    head = split_head(model)
    if head is None:
        _logger.warning(f'{run_.args["model"]} has no Split-and-Share head: only the full-feature Grad-CAM is drawn.')
    config = run_data_config(run_, model, vars(args))
    check_map_size(run_, model, config)
    items, data_names = _inputs(args, model, run_)
    names = class_names(run_, model) or data_names
    paths = [os.path.join(args.out, f'{stem}_cam.png') for stem, _, _ in items]
    check_outputs([('--out', p) for p in paths], [run_], args.class_map, args.overwrite)

    def _name(c):
        return f'{c}: {names[c]}' if names is not None and c < len(names) else f'class {c}'

    transform, chans = create_transform(**config), config['input_size'][0]
    mean, std = torch.tensor(config['mean']).view(-1, 1, 1), torch.tensor(config['std']).view(-1, 1, 1)
    written = []
    for (stem, img, label), path in zip(items, paths):
        x = transform(img.convert('RGB' if chans == 3 else 'L'))[None].to(device)
        with torch.no_grad():
            logits = model(x)
        if not torch.isfinite(logits).all():
            raise RunError(f'{stem} gives logits that are not finite (NaN or inf): check the checkpoint (its weights '
                           f'overflow on this image).')
        pred = int(logits.argmax(-1))
        target = args.target_class if args.target_class is not None else label if label is not None else pred
        cams, ranges, _ = grad_cams(model, x, torch.tensor([target], device=device))
        source = 'given' if args.target_class is not None else 'ground truth' if label is not None else 'prediction'
        titles = [('input', _name(target)[:28])] + [(f'{a}-{b}', f'FC{j + 1}') for j, (a, b) in enumerate(ranges[:-1])]
        titles.append((f'{ranges[-1][0]}-{ranges[-1][1]}', 'averaged' if head is not None else 'output'))
        what = f'target {_name(target)} ({source}), prediction {_name(pred)}'
        grid = cam_grid(x[0].cpu() * std + mean, cams[0], titles, header=f'{stem}   {what}', panel=args.panel,
                        alpha=args.alpha)
        try:
            atomic_write(path, lambda f: grid.save(f, format='PNG'))
        except OSError as e:
            raise _WriteError(write_error(path, e, f'the {len(written)} grid(s) written before it are kept')) from e
        written.append((path, target, pred))
        print(f'{path}: {what}')
    return written


def main(argv: Optional[Sequence[str]] = None) -> List[Tuple[str, int, int]]:
    """Run the command line `python -m timm_ssm.cam ARGS`; (path, target class, predicted class) of each grid."""
    args = parser.parse_args(argv)
    try:
        written = run(args)
    except RunError as e:
        parser.exit(1 if isinstance(e, _WriteError) else 2, f'{parser.prog}: error: {e}\n')
    print(f'wrote {len(written)} Grad-CAM grid(s) to {args.out}')
    return written


if __name__ == '__main__':
    setup_default_logging()
    main()
