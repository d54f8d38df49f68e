""" Grad-CAM per channel group of a Split-and-Share model

Paper: `Exploiting Features with Split-and-Share Module` - https://doi.org/10.3390/electronics11020235
(Lee et al., Electronics 2022), section 5, Figures 2 and 3.

For sub-classifier j of n, the Grad-CAM of the trunk's last feature map restricted to channel group j (the
channels j * C/n .. (j + 1) * C/n - 1) with respect to sub-classifier j's logit of the target class; then the
Grad-CAM of all C channels with respect to the averaged output. Grad-CAM (Selvaraju et al., ICCV 2017): the
gradients of the logit, averaged over the map, weight the map's channels; the ReLU of the weighted sum is the
heat map.

`python -m timm_ssm.cam IMAGE_OR_FOLDER --model NAME [--checkpoint PATH] --out DIR` writes one PNG grid per
image: the image, then one heat map per channel group titled by its channel range (`0-511`, `512-1023`, ...),
then the full feature's. The target class is the ground truth when a folder of class folders (or a timm data
set) gives it, else the averaged output's prediction, or `--target-class`.

The Grad-CAM is a few lines here rather than the `grad-cam` package: that package would add OpenCV, SciPy,
scikit-learn and ttach to the install, and its hooks on a target layer would still need a custom target and a
channel mask to express a per-sub-classifier, per-group map.
"""
import argparse
import logging
import os
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont, UnidentifiedImageError
from PIL.PngImagePlugin import PngInfo

from timm.data import ImageNetInfo, create_transform, get_img_extensions, infer_imagenet_subset
from timm.utils import setup_default_logging

from .runs import atomic_write, check_output_folder, check_outputs, class_names, create_run_dataset, \
    data_config_from_args, models_from_args, number_in, resolve_device, run_data_config, run_input_files, run_parser, \
    split_head, write_error

__all__ = ['feature_gradients', 'grad_cams', 'cam_grid', 'check_image_size', 'check_feature_map', 'PANEL_PAD', 'main']

_logger = logging.getLogger(__name__)

PANEL_PAD = 8  # pixels between and around the panels of a grid


def _spatial_features(model: nn.Module, x: torch.Tensor) -> Tuple[torch.Tensor, bool]:
    """The trunk's last feature map and whether it is channels-last (NHWC), or a clear error."""
    feat = model.forward_features(x)
    trunk = getattr(model, 'trunk', model)
    name = trunk.pretrained_cfg.get('architecture', type(trunk).__name__) if hasattr(trunk, 'pretrained_cfg') \
        else type(trunk).__name__
    if not isinstance(feat, torch.Tensor) or feat.ndim != 4:
        shape = tuple(feat.shape) if isinstance(feat, torch.Tensor) else type(feat).__name__
        raise ValueError(
            f'Grad-CAM needs a spatial feature map (batch, channels, height, width) from forward_features(), but '
            f'{name} gives {shape} (tokens or pooled features, no map). Use a convolutional trunk such as '
            f'resnet50_ssm, resnext50_32x4d_ssm, convnext_tiny_ssm or efficientnet_b0_ssm.')
    return feat, getattr(trunk, 'output_fmt', 'NCHW') == 'NHWC'


def feature_gradients(
        model: nn.Module,
        x: torch.Tensor,
        target: torch.Tensor,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The trunk's last feature map and the gradients of the target logits with respect to it.

    Args:
        model: A model in eval mode, with a Split-and-Share head (n sub-classifiers) or a plain timm classifier.
        x: Images (B, C_in, H, W).
        target: Target class of each image (B,).

    Returns:
        features (B, C, h, w); gradients (B, n + 1, C, h, w): of sub-classifier j's logit for j < n, of the
        averaged output's logit last (n = 0 for a plain classifier); the averaged output's logits (B, K).
    """
    with torch.no_grad():
        feat, nhwc = _spatial_features(model, x)
    feat = feat.detach().requires_grad_()
    head = split_head(model)
    with torch.enable_grad():
        if head is not None:
            pooled = model.trunk.forward_head(feat, pre_logits=True)
            if pooled.shape[-1] != feat.shape[-1 if nhwc else 1]:
                raise ValueError(
                    f'The head sees {pooled.shape[-1]} pooled features, but the last feature map has '
                    f'{feat.shape[-1 if nhwc else 1]} channels: this trunk computes its pooled features through '
                    f'more layers after the map, so the head\'s channel groups are no channels of the map and '
                    f'per-group Grad-CAM is not defined for it.')
            splits = head.forward_splits(pooled)  # (B, n, K)
            outputs = list(splits.unbind(1)) + [splits.mean(1)]
        else:
            outputs = [model.forward_head(feat)]
        rows = torch.arange(x.shape[0], device=x.device)
        grads = torch.stack([
            torch.autograd.grad(out[rows, target].sum(), feat, retain_graph=True)[0] for out in outputs
        ], 1)
    logits = outputs[-1].detach()
    feat = feat.detach()
    if nhwc:
        feat = feat.permute(0, 3, 1, 2)
        grads = grads.permute(0, 1, 4, 2, 3)
    return feat, grads, logits


def grad_cams(
        model: nn.Module,
        x: torch.Tensor,
        target: torch.Tensor,
) -> Tuple[torch.Tensor, List[Tuple[int, int]], torch.Tensor]:
    """Grad-CAM of each channel group w.r.t. its sub-classifier, and of all channels w.r.t. the averaged output.

    Args:
        model: A model in eval mode, with a Split-and-Share head or a plain timm classifier.
        x: Images (B, C_in, H, W).
        target: Target class of each image (B,).

    Returns:
        Heat maps (B, n + 1, H, W) in [0, 1] (each scaled to its own minimum and maximum), upsampled to the
        images' size;
        the channel range (first, last) of each map; the averaged output's logits (B, K).
    """
    feat, grads, logits = feature_gradients(model, x, target)
    channels = feat.shape[1]
    if min(feat.shape[-2:]) < 2:
        flat = ', so they are drawn flat (one colour)' if feat.shape[-2] * feat.shape[-1] == 1 else ''
        _logger.warning(
            f'The last feature map is {feat.shape[-2]}x{feat.shape[-1]} for {x.shape[-2]}x{x.shape[-1]} images: the '
            f'heat maps carry no spatial information{flat}. Use larger images (--img-size).')
    head = split_head(model)
    n = head.num_splits if head is not None else 0
    group = channels // n if n else channels
    ranges = [(j * group, (j + 1) * group - 1) for j in range(n)] + [(0, channels - 1)]
    weights = grads.mean((3, 4))  # (B, n + 1, C)
    cams = []
    for j, (first, last) in enumerate(ranges):
        w = weights[:, j, first:last + 1, None, None]
        cams.append(F.relu((w * feat[:, first:last + 1]).sum(1)))
    cams = torch.stack(cams, 1)
    cams = F.interpolate(cams, size=x.shape[-2:], mode='bilinear', align_corners=False)
    # min-max scaling of each map, as the grad-cam package shows them; a map without spatial information (a 1x1
    # feature map, or values equal up to rounding) stays flat at 0 instead of stretching rounding noise to colours
    low, high = cams.flatten(2).amin(-1)[..., None, None], cams.flatten(2).amax(-1)[..., None, None]
    flat = (high - low <= 1e-4 * high.abs()) | (feat.shape[-2] * feat.shape[-1] == 1)
    cams = torch.where(flat, torch.zeros_like(cams), (cams - low) / (high - low + 1e-7))
    return cams, ranges, logits


def _jet(cam: torch.Tensor) -> torch.Tensor:
    """The jet colour map of values in [0, 1], (H, W) -> (3, H, W)."""
    x = cam[None] * 4
    centers = torch.tensor([3., 2., 1.], device=cam.device)[:, None, None]
    return (1.5 - (x - centers).abs()).clamp(0, 1)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def cam_grid(
        image: torch.Tensor,
        cams: torch.Tensor,
        titles: Sequence[Tuple[str, str]],
        header: str = '',
        panel: int = 224,
        alpha: float = 0.5,
) -> Image.Image:
    """One row of panels: the image, then each heat map overlaid on it, each under a two-line title.

    Args:
        image: The image as the model saw it, (C, H, W) in [0, 1], C = 1 or 3.
        cams: Heat maps (m, H, W) in [0, 1].
        titles: Two title lines per panel, m + 1 of them (the image's first).
        header: A line above the row.
        panel: Side of each square panel in pixels.
        alpha: Weight of the heat map in the overlay.

    Returns:
        An RGB image of width (m + 1) * (panel + PANEL_PAD) + PANEL_PAD.
    """
    image = image.float().cpu().clamp(0, 1)
    image = image.expand(3, -1, -1) if image.shape[0] == 1 else image[:3]
    panels = [image] + [(1 - alpha) * image + alpha * _jet(c.float().cpu()) for c in cams]
    font, small = _font(max(10, panel // 14)), _font(max(9, panel // 18))
    line = max(12, panel // 12)
    top = PANEL_PAD + (line if header else 0) + 2 * line
    grid = Image.new('RGB', (len(panels) * (panel + PANEL_PAD) + PANEL_PAD, top + panel + PANEL_PAD), 'white')
    draw = ImageDraw.Draw(grid)
    if header:
        draw.text((PANEL_PAD, PANEL_PAD // 2), header, fill='black', font=small)
    for i, (p, (title, subtitle)) in enumerate(zip(panels, titles)):
        left = PANEL_PAD + i * (panel + PANEL_PAD)
        pixels = (p.permute(1, 2, 0).numpy() * 255).round().astype('uint8')
        grid.paste(Image.fromarray(pixels).resize((panel, panel), Image.BILINEAR), (left, top))
        draw.text((left + panel // 2, top - line - line // 2), title, fill='black', font=font, anchor='mm')
        draw.text((left + panel // 2, top - line // 2), subtitle, fill='dimgray', font=small, anchor='mm')
    return grid


def _label_names(model: nn.Module, dataset_names: Optional[Sequence[str]]) -> Optional[List[str]]:
    k = model.num_classes
    if dataset_names is not None and len(dataset_names) <= k:  # names of the data set's first classes
        return list(dataset_names)
    names = model.pretrained_cfg.get('label_names') if hasattr(model, 'pretrained_cfg') else None
    if names is not None and len(names) == k:
        return list(names)
    subset = infer_imagenet_subset(model)
    if subset is not None:
        info = ImageNetInfo(subset)
        if info.num_classes() == k:
            return [info.index_to_description(i) for i in range(k)]
    return None


def _inputs(args, model: nn.Module, run) -> Tuple[List[Tuple[str, Image.Image, Optional[int]]], Optional[List[str]]]:
    """(name, image, ground-truth class or None) of each input image, and the data set's class names; the data
    checked as timm_ssm.evaluate checks it (`runs.create_run_dataset`)."""
    if args.dataset or (args.input is None and args.data_dir):
        dataset = create_run_dataset(args.data_dir, model, run, dataset=args.dataset, split=args.split,
                                     class_map=args.class_map, download=args.dataset_download)
        items = []
        for i in range(min(args.num_images, len(dataset))):
            img, label = dataset[i]
            items.append((f'{i:05d}', img, int(label)))
        return items, class_names(dataset)
    if args.input is None:
        raise ValueError('Give an image file or folder, or a timm data set with --dataset and --data-dir.')
    if os.path.isfile(args.input):
        stem = os.path.splitext(os.path.basename(args.input))[0]
        try:
            return [(stem, Image.open(args.input), None)], None
        except (UnidentifiedImageError, OSError) as e:
            raise ValueError(f'{args.input} is not an image that Pillow can read ({e}): give an image file '
                             f'({", ".join(get_img_extensions())}) or a folder of them.') from e
    if not os.path.isdir(args.input):
        raise FileNotFoundError(f'{args.input} is neither an image file nor a folder.')
    # a folder of class folders gives the ground truth, as timm's ImageFolder reads it
    dataset = create_run_dataset(args.input, model, run, split='', search_split=False, class_map=args.class_map,
                                 labelled=False, option='input folder')
    names = class_names(dataset)  # class folders give the ground truth; none for a flat folder
    labelled = names is not None or bool(args.class_map)
    count = min(args.num_images, len(dataset))
    stems = grid_stems([dataset.filename(i) for i in range(count)])
    items = []
    for i, stem in enumerate(stems):
        img, label = dataset[i]
        items.append((stem, img, int(label) if labelled else None))
    if not items:
        raise ValueError(f'No images ({", ".join(get_img_extensions())}) in {args.input}.')
    return items, names


def grid_stems(paths: Sequence[str]) -> List[str]:
    """One distinct output name per input image: its path relative to the input folder with the folders joined by
    '_' (`cat/a.png` -> `cat_a`), and, where two paths give one name (`a/b_c.png`, `a_b/c.png`, `a/b_c.jpg`), the
    extension and then a number until each name is unique."""
    stems = [os.path.splitext(p)[0].replace(os.sep, '_').replace('/', '_') for p in paths]
    clashes = {s for s in stems if stems.count(s) > 1}
    stems = [f'{s}_{os.path.splitext(p)[1].lstrip(".")}' if s in clashes else s for s, p in zip(stems, paths)]
    taken, out = set(), []
    for stem in stems:
        name, i = stem, 2
        while name in taken or (name != stem and name in stems):
            name, i = f'{stem}_{i}', i + 1
        taken.add(name)
        out.append(name)
    return out


_PNG_SOFTWARE = 'timm_ssm.cam'  # the PNG text chunk that marks a grid of this tool


def is_own_grid(path) -> bool:
    """Whether an existing file is a grid an earlier run of this tool wrote."""
    try:
        with Image.open(path) as im:
            return im.format == 'PNG' and im.info.get('Software') == _PNG_SOFTWARE
    except (OSError, ValueError):
        return False


def _check_grid_paths(args, paths: Sequence[str], run):
    """The grids' paths are refused before the pass when they would replace an input or a file that is no earlier
    grid (without --overwrite)."""
    inputs = run_input_files(run) + ([args.class_map] if args.class_map else [])
    folders = [f for f in (args.input, args.data_dir if not args.dataset else None) if f and os.path.isdir(f)]
    foreign = [p for p in paths if os.path.exists(p) and not is_own_grid(p)]
    if foreign and not args.overwrite:
        raise ValueError(f'{len(foreign)} file(s) already in {args.out} are no grids of an earlier {parser.prog} run '
                         f'({", ".join(foreign[:3])}{", ..." if len(foreign) > 3 else ""}): give another --out, or '
                         f'--overwrite to replace them.')
    check_outputs({f'grid {os.path.basename(p)}': p for p in paths}, inputs, folders, overwrite=True,
                  tool=parser.prog)


def check_image_size(run_, model: nn.Module, config) -> Optional[str]:
    """A warning when the image size of the maps differs from the size the run was trained and evaluated at: a
    model explains its predictions only where it makes them well (the default run, trained at 28 px: 91% top-1
    at 28 px, 23% at 64 px). None when the sizes agree."""
    own = run_data_config(run_, model)['input_size'][1:]
    asked = config['input_size'][1:]
    if tuple(own) == tuple(asked):
        return None
    what = 'trained and evaluated' if run_.trained else 'pretrained'
    return (f'the maps are drawn at {asked[0]}x{asked[1]} px, but {run_.args.get("model", "the model")} was {what} '
            f'at {own[0]}x{own[1]} px: its predictions, and so its maps, may be wrong at this size (check its '
            f'top-1 with python -m timm_ssm.evaluate --img-size {asked[0]}). Leave out --img-size/--input-size, or '
            f'train at the size you want the maps at.')


def check_feature_map(model: nn.Module, config) -> Optional[str]:
    """A warning when the last feature map is small (below 4x4) at the maps' image size.

    Raises:
        ValueError: It is 1x1: every heat map would be one flat colour. The message says what to do.
    """
    device = next(model.parameters()).device
    with torch.no_grad():
        feat, nhwc = _spatial_features(model, torch.zeros(1, *config['input_size'], device=device))
    h, w = feat.shape[1:3] if nhwc else feat.shape[2:4]
    size = config['input_size'][1]
    fix = (f'Train the model at a size whose last map is at least 4x4 (for the default run on 28 px images: '
           f'--model-kwargs output_stride=8, which gives 4x4), or give a larger --img-size, which needs a model '
           f'trained at that size')
    if h == 1 and w == 1:
        raise ValueError(f'the last feature map of the model is 1x1 at {size} px: every heat map would be one flat '
                         f'colour, Grad-CAM cannot show where the model looks. {fix}.')
    if h < 4 or w < 4:
        return f'the last feature map is {h}x{w} at {size} px: the maps are coarse. {fix}.'
    return None


parser = argparse.ArgumentParser(
    prog='python -m timm_ssm.cam',
    description='Grad-CAM per channel group of a Split-and-Share model (paper section 5): one PNG grid per image.',
    parents=[run_parser],
)
parser.add_argument('input', nargs='?', default=None,
                    help='an image, or a folder of images (class folders give the ground truth)')
parser.add_argument('--out', default='cam', metavar='DIR', help='output folder (default: cam)')
parser.add_argument('--overwrite', action='store_true', default=False,
                    help='replace grids already in --out (default: refuse, and write nothing)')
# one model: lists of one, as timm_ssm.evaluate's options of several
parser.add_argument('--model', '-m', nargs=1, default=None, metavar='NAME',
                    help='model name, hf-hub:ORG/NAME or local-dir:DIR (default: from the checkpoint)')
parser.add_argument('--checkpoint', nargs=1, default=[], metavar='RUN', help='train.py output folder or checkpoint')
parser.add_argument('--target-class', type=number_in(int, 0), default=None,
                    help='class of the heat maps (default: the ground truth when known, else the prediction)')
parser.add_argument('--num-images', type=number_in(int, 1), default=16, metavar='N',
                    help='at most this many images of a folder or data set (default: 16)')
parser.add_argument('--panel', type=number_in(int, 16, 2048), default=224, metavar='PX',
                    help='side of each panel in pixels, 16..2048 (default: 224)')
parser.add_argument('--alpha', type=number_in(float, 0, 1), default=0.5,
                    help='weight of the heat map in the overlay, in [0, 1] (default: 0.5)')


class _WriteError(OSError):
    """A grid that could not be written (full disk), with the message to show."""


def run(args) -> List[Tuple[str, int, int]]:
    """Write the grids the command line asks for; (path, target class, predicted class) of each."""
    device = resolve_device(args.device)
    check_output_folder(args.out, '--out')
    ((run_, model),) = models_from_args(args, device)
    if args.target_class is not None and not 0 <= args.target_class < model.num_classes:
        raise ValueError(f'--target-class {args.target_class} is outside the model\'s {model.num_classes} classes '
                         f'(0..{model.num_classes - 1}).')
    head = split_head(model)
    if head is None:
        _logger.warning(f'{run_.args["model"]} has no Split-and-Share head: only the full-feature Grad-CAM is drawn.')

    config = data_config_from_args(args, run_, model)
    for warning in (check_image_size(run_, model, config), check_feature_map(model, config)):
        if warning is not None:
            _logger.warning(warning)
    transform = create_transform(**config)
    chans = config['input_size'][0]
    mean, std = torch.tensor(config['mean']).view(-1, 1, 1), torch.tensor(config['std']).view(-1, 1, 1)

    items, dataset_names = _inputs(args, model, run_)
    names = _label_names(model, dataset_names)
    _check_grid_paths(args, [os.path.join(args.out, f'{stem}_cam.png') for stem, _, _ in items], run_)
    info = PngInfo()
    info.add_text('Software', _PNG_SOFTWARE)
    written = []
    for stem, img, label in items:
        img = img.convert('RGB' if chans == 3 else 'L')
        x = transform(img)[None].to(device)
        with torch.no_grad():
            pred = int(model(x).argmax(-1))
        target = args.target_class if args.target_class is not None else label if label is not None else pred
        if not 0 <= target < model.num_classes:
            raise ValueError(f'Target class {target} is outside the model\'s {model.num_classes} classes.')
        cams, ranges, _ = grad_cams(model, x, torch.tensor([target], device=device))

        def _name(c):
            return f'{c}: {names[c]}' if names is not None and c < len(names) else f'class {c}'

        source = 'given' if args.target_class is not None else 'ground truth' if label is not None else 'prediction'
        header = f'{stem}   target {_name(target)} ({source})   prediction {_name(pred)}'
        titles = [('input', _name(target)[:28])]
        titles += [(f'{first}-{last}', f'FC{j + 1}') for j, (first, last) in enumerate(ranges[:-1])]
        titles.append((f'{ranges[-1][0]}-{ranges[-1][1]}', 'averaged' if head is not None else 'output'))
        shown = x[0].cpu() * std + mean
        grid = cam_grid(shown, cams[0], titles, header=header, panel=args.panel, alpha=args.alpha)
        path = os.path.join(args.out, f'{stem}_cam.png')
        try:
            atomic_write(path, lambda f: grid.save(f, format='PNG', pnginfo=info))
        except OSError as e:
            kept = f'the {len(written)} grid(s) written before it are kept'
            raise _WriteError(write_error(path, e, kept=kept)) from e
        written.append((path, target, pred))
        _logger.info(f'{path}: target {_name(target)} ({source}), prediction {_name(pred)}')
    return written


def main(argv: Optional[Sequence[str]] = None) -> List[Tuple[str, int, int]]:
    """Run the command line `python -m timm_ssm.cam ARGS`.

    Args:
        argv: The arguments, sys.argv[1:] if None.

    Returns:
        (path, target class, predicted class) of each PNG grid written.
    """
    args = parser.parse_args(argv)
    try:
        written = run(args)
    except _WriteError as e:  # a full disk: the grids written so far stay, no partial one is left
        parser.exit(1, f'{parser.prog}: error: {e}\n')
    except (ValueError, FileNotFoundError, ImportError) as e:  # RunError is a ValueError
        parser.exit(2, f'{parser.prog}: error: {e}\n')
    print(f'{len(written)} Grad-CAM grid(s) in {args.out}')
    return written


if __name__ == '__main__':
    setup_default_logging()
    main()
