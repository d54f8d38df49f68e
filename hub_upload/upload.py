#!/usr/bin/env python3
""" Publish an SSM model trained with timm's train.py to the Hugging Face Hub, in timm's format

    python hub_upload/upload.py RUN_OR_CHECKPOINT --repo-id ORG/NAME [--out DIR] [--dry-run] ...

RUN_OR_CHECKPOINT is a train.py output folder (model_best.pth.tar, args.yaml, summary.csv) or one checkpoint.
The export (model.safetensors, config.json, README.md) loads back with
`import timm_ssm; timm.create_model('hf-hub:ORG/NAME', pretrained=True)`. The token comes from HF_TOKEN or
`hf auth login`; it is never printed.
"""
import argparse
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Optional, Sequence, Tuple

if __package__ in (None, ''):  # run as a script: import this checkout's packages
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from huggingface_hub import CommitInfo, HfApi, constants, get_token
from huggingface_hub.errors import HfHubHTTPError, HFValidationError, RepositoryNotFoundError
from huggingface_hub.utils import validate_repo_id

import timm
from timm.utils import ParseKwargs

from hub_upload.card import hub_dataset_id, model_card
from hub_upload.export import (
    CHECKPOINT_NAME, ExportError, base_weights, create_run_model, find_eval_results, find_label_names, load_run,
    prepare_pretrained_cfg, run_data_config, write_export,
)

__all__ = ['main', 'check_repo_id', 'check_remote', 'push_folder']


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description='Export an SSM model trained with timm\'s train.py in timm\'s Hugging Face Hub format '
                    '(model.safetensors, config.json, README.md model card) and upload it.')
    parser.add_argument('run', metavar='RUN_OR_CHECKPOINT',
                        help=f'train.py output folder ({CHECKPOINT_NAME}, args.yaml, summary.csv) or a checkpoint')
    parser.add_argument('--repo-id', required=True, metavar='ORG/NAME', help='Hub repository: user or org / name')
    parser.add_argument('--out', metavar='DIR', default=None,
                        help='new folder for the export (never overwritten); default: RUN/hub-ORG--NAME for '
                             '--dry-run, a temporary folder for an upload')
    parser.add_argument('--dry-run', action='store_true',
                        help='write the export and print what would be uploaded; needs no token and sends nothing')

    group = parser.add_argument_group('Weights')
    group.add_argument('--checkpoint', metavar='NAME', default=None,
                       help=f'checkpoint file in the run folder (default: {CHECKPOINT_NAME})')
    group.add_argument('--ema', action='store_true', help='export the checkpoint\'s EMA weights')
    group.add_argument('--model', metavar='NAME', default=None,
                       help='architecture (<arch>_ssm), when there is no args.yaml or to override it')
    group.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs, metavar='KEY=VALUE',
                       help='model arguments over those of args.yaml, as train.py\'s --model-kwargs')

    group = parser.add_argument_group('Model card')
    group.add_argument('--license', default=None,
                       help='license id (default: that of the pretrained weights the run started from, else '
                            'apache-2.0)')
    group.add_argument('--tag', action='append', default=[], dest='tags', metavar='TAG',
                       help='extra Hub tag (repeatable)')
    group.add_argument('--dataset-id', default=None, metavar='ORG/NAME',
                       help='Hub data set id for the card metadata (default: from the run\'s --dataset)')
    group.add_argument('--eval-json', default=None, metavar='FILE',
                       help='per-sub-classifier results, the --json output of python -m timm_ssm.evaluate (default: '
                            'one for the checkpoint in its folder, if any)')
    group.add_argument('--label-names', default=None, metavar='FILE',
                       help='class names, one per line or a JSON list (default: from the run\'s data set)')

    group = parser.add_argument_group('Upload')
    group.add_argument('--private', action='store_true', help='create the repository private')
    group.add_argument('--revision', default=None, metavar='BRANCH', help='branch to commit to (default: main)')
    group.add_argument('--commit-message', default=None, metavar='MESSAGE', help='commit message')
    group.add_argument('--overwrite-card', action='store_true',
                       help='replace a README.md that the repository already has (kept by default)')
    return parser


def check_repo_id(repo_id: str):
    """Raise ExportError unless `repo_id` is a valid `ORG/NAME` model repository id."""
    if repo_id.startswith('hf-hub:'):
        raise ExportError(f'--repo-id takes ORG/NAME without the hf-hub: prefix: --repo-id {repo_id[7:]}')
    org, sep, name = repo_id.partition('/')
    if not sep or not org or not name or '/' in name:
        raise ExportError(
            f'--repo-id must be ORG/NAME (your user or organization, a slash, the model name, e.g. '
            f'alice/resnet50-ssm-fashion-mnist), got {repo_id!r}.')
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise ExportError(f'--repo-id {repo_id!r} is not a valid Hub repository id: {e}') from None


class HubError(Exception):
    """The Hub could not be reached or refused a request."""


def _transport_errors() -> Tuple[type, ...]:
    """Errors of reaching the Hub: OSError, and the errors of the HTTP client that huggingface_hub uses (requests
    before its 1.0, httpx or httpx2 after), of those clients that are imported."""
    errors = [OSError]
    for module, name in (('requests', 'RequestException'), ('httpx', 'HTTPError'), ('httpx2', 'HTTPError')):
        error = getattr(sys.modules.get(module), name, None)
        if isinstance(error, type) and issubclass(error, BaseException):
            errors.append(error)
    return tuple(errors)


@contextmanager
def _hub_errors(action: str):
    """Report huggingface_hub's HTTP errors and those of reaching the Hub as HubError; let any other error raise."""
    try:
        yield
    except HfHubHTTPError as e:
        raise HubError(f'the Hub refused to {action}: {e}') from e
    except _transport_errors() as e:
        if getattr(e, 'response', None) is not None:  # an HTTP error status of the client itself
            raise HubError(f'the Hub refused to {action}: {e}') from e
        raise HubError(f'cannot reach the Hub at {constants.ENDPOINT} to {action}: {type(e).__name__}: {e}') from e


def check_remote(api: HfApi, repo_id: str, private: bool = False) -> str:
    """Check, before exporting anything, that the token is valid and that `--private` can be honored.

    Returns:
        The name of the token's user.
    """
    user = api.whoami()['name']
    if private:
        try:
            public = not api.repo_info(repo_id).private
        except RepositoryNotFoundError:
            public = False
        if public:
            raise ExportError(
                f'--private: {repo_id} exists and is public, and uploading does not change that. Make it private '
                f'in its settings on the Hub first, or upload without --private.')
    return user


def push_folder(
        api: HfApi,
        folder: Path,
        repo_id: str,
        commit_message: str,
        private: bool = False,
        revision: Optional[str] = None,
        overwrite_card: bool = False,
) -> Tuple[CommitInfo, bool]:
    """Upload an export folder as `timm.models.push_to_hf_hub` does, keeping a README.md already on the Hub.

    Args:
        api: Client with the token.
        folder: The export.
        repo_id: `ORG/NAME`, created if it does not exist.
        commit_message: Commit message.
        private: Create the repository private.
        revision: Branch to commit to, created from main if it does not exist.
        overwrite_card: Replace an existing README.md.

    Returns:
        The commit info of `HfApi.upload_folder`, and whether an existing README.md was kept.
    """
    api.create_repo(repo_id, private=True if private else None, exist_ok=True)  # None: the Hub's default
    if revision and revision != 'main':
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    keep_card = not overwrite_card and api.file_exists(repo_id, 'README.md', revision=revision)
    info = api.upload_folder(
        repo_id=repo_id,
        folder_path=folder,
        revision=revision,
        commit_message=commit_message,
        ignore_patterns=['README.md'] if keep_card else None,
    )
    return info, keep_card


def _size(nbytes: int) -> str:
    for unit in ('B', 'kB', 'MB', 'GB'):
        if nbytes < 1000 or unit == 'GB':
            return f'{nbytes:.0f} {unit}' if unit == 'B' else f'{nbytes:.1f} {unit}'
        nbytes /= 1000


def _export(args, out: Path) -> str:
    run = load_run(args.run, checkpoint=args.checkpoint, ema=args.ema)
    print(f'Checkpoint: {run.checkpoint}' + (f' (epoch {run.epoch})' if run.epoch is not None else '')
          + (', EMA weights' if run.ema else ''))
    if run.has_ema and not run.ema:
        print('  It also has EMA weights: pass --ema to publish those instead.')
    print(f'Arguments: {run.args_source}')
    print(f'Results: {run.summary_file} ({len(run.summary)} epochs)' if run.summary_file else
          'Results: none (no summary.csv next to the checkpoint)')
    model = create_run_model(run, model_name=args.model, model_kwargs=args.model_kwargs)
    data_config = run_data_config(run, model)
    label_names, note = find_label_names(run, model.num_classes, args.label_names)
    print(f'Label names: {note}')
    evaluation, evaluation_file = find_eval_results(run, model.num_classes, model.head.num_splits, args.eval_json)
    print(f'Sub-classifier results: {evaluation_file}')
    base_model, license = base_weights(run, model, args.license)
    prepare_pretrained_cfg(model, license)
    readme = model_card(
        run,
        model,
        args.repo_id,
        data_config,
        license=license,
        tags=args.tags,
        dataset_id=args.dataset_id or hub_dataset_id(run.args.get('dataset')),
        base_model=base_model,
        label_names=label_names,
        evaluation=evaluation,
        evaluation_file=evaluation_file,
    )
    write_export(model, out, data_config, readme, label_names=label_names)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f'Model: {model.pretrained_cfg["architecture"]}, {model.num_classes} classes, '
          f'{model.head.num_splits} sub-classifiers, {params:.3f} M parameters; the export loads back with '
          f'local-dir: and gives the checkpoint\'s logits.')
    print(f'Wrote {out}:')
    for p in sorted(out.iterdir()):
        print(f'  {p.name:<20} {_size(p.stat().st_size):>10}')
    return model.pretrained_cfg['architecture']


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    try:
        check_repo_id(args.repo_id)
        if args.out is not None:
            out = Path(args.out)
        elif args.dry_run:
            run_dir = Path(args.run) if Path(args.run).is_dir() else Path(args.run).parent
            out = run_dir / f'hub-{args.repo_id.replace("/", "--")}'
        else:
            out = None  # a temporary folder
        if out is not None and (out.exists() or out.is_symlink()):
            raise ExportError(f'{out} already exists: an export never overwrites anything; remove it or pass '
                              f'another --out.')
        api = None
        if not args.dry_run:
            token = get_token()
            if not token:
                raise ExportError(
                    'No Hugging Face token: set HF_TOKEN, or log in once with `hf auth login` (older '
                    'huggingface_hub: `huggingface-cli login`). --dry-run needs no token.')
            api = HfApi(token=token, library_name='timm', library_version=timm.__version__)
            with _hub_errors('check the token and repository'):
                user = check_remote(api, args.repo_id, args.private)
            print(f'Hub: {constants.ENDPOINT}, as {user}')
        where = f'{constants.ENDPOINT}/{args.repo_id}' + (f' (branch {args.revision})' if args.revision else '')
        if args.dry_run:
            _export(args, out)
            print(f'Dry run: would upload these files to {where}'
                  + ('; a README.md already there would be kept' if not args.overwrite_card else '')
                  + '. Nothing was sent.')
            return 0
        with tempfile.TemporaryDirectory(prefix='hub_upload_') as tmp:
            folder = out or Path(tmp) / args.repo_id.split('/')[-1]
            arch = _export(args, folder)
            message = args.commit_message or f'Add {arch} weights (timm-ssm export of a timm train.py run)'
            print(f'Uploading to {where} ...')
            with _hub_errors('upload'):
                info, kept_card = push_folder(
                    api,
                    folder,
                    args.repo_id,
                    message,
                    private=args.private,
                    revision=args.revision,
                    overwrite_card=args.overwrite_card,
                )
        if kept_card:
            print('The repository already has a README.md: kept it (pass --overwrite-card to replace it).')
        print(f'Uploaded: {info.commit_url}')
        print(f'Load it with: import timm, timm_ssm; timm.create_model(\'hf-hub:{args.repo_id}\', pretrained=True)')
        return 0
    except ExportError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    except HubError as e:
        print(f'error: {e}', file=sys.stderr)
        return 1


if __name__ == '__main__':
    sys.exit(main())
