"""A local stand-in for the Hugging Face Hub's HTTP API, for testing uploads offline.

The Hub cannot be reached from the test machines. This server answers the few endpoints that huggingface_hub's
own `HfApi.create_repo`, `repo_info`, `create_branch`, `file_exists` and `upload_folder` call (small files, sent
as regular base64 blobs in the commit), so that the real client code runs unchanged against it. It keeps every
request's headers so that tests can check where the token went.
"""
import base64
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, List, Optional
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

__all__ = ['FakeHub']


class FakeHub:
    """Run with `with FakeHub(token) as hub:`; `hub.url` is the endpoint, `hub.files(repo_id, branch)` the files."""

    def __init__(self, token: str):
        self.token = token
        self.repos: Dict[str, dict] = {}
        self.requests: List[dict] = []
        self.commits: List[dict] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass  # keep the test output clean

            def do_GET(self):
                hub._handle(self, 'GET')

            def do_HEAD(self):
                hub._handle(self, 'HEAD')

            def do_POST(self):
                hub._handle(self, 'POST')

        self._server = ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.url = f'http://127.0.0.1:{self._server.server_address[1]}'
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()

    def add_repo(self, repo_id: str, files: Optional[Dict[str, bytes]] = None, private: bool = False):
        self.repos[repo_id] = dict(private=private, branches={'main': dict(files or {})})

    def files(self, repo_id: str, branch: str = 'main') -> Dict[str, bytes]:
        return self.repos[repo_id]['branches'][branch]

    def _reply(self, handler, status: int, body=None, headers=None):
        data = json.dumps(body).encode() if body is not None else b''
        handler.send_response(status)
        for k, v in (headers or {}).items():
            handler.send_header(k, v)
        handler.send_header('Content-Type', 'application/json')
        handler.send_header('Content-Length', str(len(data)))
        handler.end_headers()
        if handler.command != 'HEAD':
            handler.wfile.write(data)

    def _not_found(self, handler, code: str):
        self._reply(handler, 404, {'error': code}, {'X-Error-Code': code, 'X-Error-Message': code})

    def _handle(self, handler, method: str):
        url = urlsplit(handler.path)
        path = [unquote(p) for p in url.path.strip('/').split('/')]
        length = int(handler.headers.get('Content-Length') or 0)
        body = handler.rfile.read(length) if length else b''
        self.requests.append(dict(method=method, path=url.path, headers=dict(handler.headers.items())))
        if handler.headers.get('authorization') != f'Bearer {self.token}':
            return self._reply(handler, 401, {'error': 'Invalid credentials'}, {'X-Error-Message': 'Invalid token'})

        if method == 'POST' and path == ['api', 'repos', 'create']:
            payload = json.loads(body)
            repo_id = f'{payload["organization"]}/{payload["name"]}'
            if repo_id in self.repos:
                return self._reply(handler, 409, {'error': 'Repo exists', 'url': f'{self.url}/{repo_id}'})
            self.add_repo(repo_id, private=payload.get('visibility') == 'private' or bool(payload.get('private')))
            return self._reply(handler, 200, {'url': f'{self.url}/{repo_id}'})

        if method == 'GET' and path == ['api', 'whoami-v2']:
            return self._reply(handler, 200, {'type': 'user', 'name': 'someone', 'orgs': []})

        if method == 'POST' and path == ['api', 'validate-yaml']:
            # the Hub checks a model card's metadata before a commit; here: that it is a YAML mapping
            content = json.loads(body)['content']
            try:
                meta = yaml.safe_load(content.split('---\n')[1]) if content.startswith('---\n') else {}
                errors = [] if isinstance(meta, dict) else [{'message': 'metadata is not a mapping'}]
            except yaml.YAMLError as e:
                errors = [{'message': str(e)}]
            return self._reply(handler, 400 if errors else 200, {'errors': errors, 'warnings': []})

        if path[:2] == ['api', 'models'] and len(path) >= 4:
            repo_id, rest = '/'.join(path[2:4]), path[4:]
            repo = self.repos.get(repo_id)
            if repo is None:
                return self._not_found(handler, 'RepoNotFound')
            if method == 'GET' and (not rest or rest[0] == 'revision'):
                return self._reply(handler, 200, {
                    'id': repo_id, 'private': repo['private'], 'sha': '0' * 40, 'xetEnabled': False})
            if method == 'POST' and len(rest) == 2 and rest[0] == 'branch':
                if rest[1] in repo['branches']:
                    return self._reply(handler, 409, {'error': 'Reference already exists'})
                repo['branches'][rest[1]] = dict(repo['branches']['main'])
                return self._reply(handler, 200, {})
            if method == 'POST' and len(rest) == 2 and rest[0] in ('preupload', 'commit'):
                if rest[1] not in repo['branches']:
                    return self._not_found(handler, 'RevisionNotFound')
                if rest[0] == 'preupload':
                    files = json.loads(body)['files']
                    return self._reply(handler, 200, {'files': [
                        dict(path=f['path'], uploadMode='regular', shouldIgnore=False) for f in files]})
                return self._commit(handler, repo_id, rest[1], body, parse_qs(url.query))

        if method == 'HEAD' and len(path) >= 5 and path[2] == 'resolve':
            repo = self.repos.get('/'.join(path[:2]))
            if repo is None:
                return self._not_found(handler, 'RepoNotFound')
            branch = repo['branches'].get(path[3])
            if branch is None:
                return self._not_found(handler, 'RevisionNotFound')
            data = branch.get('/'.join(path[4:]))
            if data is None:
                return self._not_found(handler, 'EntryNotFound')
            return self._reply(handler, 200, None, {
                'X-Repo-Commit': '0' * 40, 'ETag': f'"{hashlib.sha1(data).hexdigest()}"',
                'X-Linked-Size': str(len(data))})
        return self._reply(handler, 404, {'error': f'FakeHub does not serve {method} {url.path}'})

    def _commit(self, handler, repo_id: str, branch: str, body: bytes, query: dict):
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        header = next(item['value'] for item in lines if item['key'] == 'header')
        files = {
            item['value']['path']: base64.b64decode(item['value']['content'])
            for item in lines if item['key'] == 'file'
        }
        pr = query.get('create_pr') == ['1']
        target = f'refs/pr/{len(self.commits) + 1}' if pr else branch
        branches = self.repos[repo_id]['branches']
        branches[target] = dict(branches[branch], **files)
        oid = hashlib.sha1(body).hexdigest()
        self.commits.append(dict(repo_id=repo_id, branch=target, message=header['summary'], files=sorted(files)))
        return self._reply(handler, 200, {
            'commitUrl': f'{self.url}/{repo_id}/commit/{oid}', 'commitOid': oid,
            'pullRequestUrl': f'{self.url}/{repo_id}/discussions/{len(self.commits)}' if pr else None})
