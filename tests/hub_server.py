"""A local stand-in for the Hugging Face Hub's HTTP API, for testing uploads offline.

It answers the endpoints that huggingface_hub's own `HfApi.whoami`, `create_repo`, `repo_info`, `create_branch`,
`file_exists` and `upload_folder` call (small files, sent as base64 in the commit), so that the real client runs
unchanged against it, and keeps every request's path and headers so that tests can check where the token went.
"""
import base64
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, Optional
from urllib.parse import unquote, urlsplit

import yaml

__all__ = ['FakeHub']


class FakeHub:
    """`with FakeHub(token) as hub:`; `hub.url` is the endpoint, `hub.files(repo_id, branch)` a branch's files."""

    def __init__(self, token: str):
        self.token, self.repos, self.requests, self.commits = token, {}, [], []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                hub._handle(self)

            do_HEAD = do_POST = do_GET

        self._server = ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.url = f'http://127.0.0.1:{self._server.server_address[1]}'

    def __enter__(self):
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()

    def add_repo(self, repo_id: str, files: Optional[Dict[str, bytes]] = None, private: bool = False):
        self.repos[repo_id] = dict(private=private, branches={'main': dict(files or {})})

    def files(self, repo_id: str, branch: str = 'main') -> Dict[str, bytes]:
        return self.repos[repo_id]['branches'][branch]

    @staticmethod
    def _reply(handler, status: int, body=None, headers=None):
        data = json.dumps(body).encode() if body is not None else b''
        handler.send_response(status)
        for k, v in dict(headers or {}, **{'Content-Type': 'application/json', 'Content-Length': len(data)}).items():
            handler.send_header(k, str(v))
        handler.end_headers()
        if handler.command != 'HEAD':
            handler.wfile.write(data)

    def _handle(self, handler):
        method, url = handler.command, urlsplit(handler.path)
        path = [unquote(p) for p in url.path.strip('/').split('/')]
        body = handler.rfile.read(int(handler.headers.get('Content-Length') or 0))
        self.requests.append(dict(method=method, path=url.path, headers=dict(handler.headers.items())))
        if handler.headers.get('authorization') != f'Bearer {self.token}':
            return self._reply(handler, 401, {'error': 'Invalid credentials'}, {'X-Error-Message': 'Invalid token'})
        if path == ['api', 'whoami-v2']:
            return self._reply(handler, 200, {'type': 'user', 'name': 'someone', 'orgs': []})
        if path == ['api', 'repos', 'create']:
            payload = json.loads(body)
            repo_id = f'{payload["organization"]}/{payload["name"]}'
            if repo_id in self.repos:
                return self._reply(handler, 409, {'error': 'Repo exists', 'url': f'{self.url}/{repo_id}'})
            self.add_repo(repo_id, private=payload.get('visibility') == 'private' or bool(payload.get('private')))
            return self._reply(handler, 200, {'url': f'{self.url}/{repo_id}'})
        if path == ['api', 'validate-yaml']:  # the Hub checks a card's metadata before a commit
            content = json.loads(body)['content']
            ok = isinstance(yaml.safe_load(content.split('---\n')[1]), dict) if content.startswith('---\n') else True
            return self._reply(handler, 200 if ok else 400, {'errors': [] if ok else [{'message': 'bad'}]})
        repo_id = '/'.join(path[2:4] if path[:2] == ['api', 'models'] else path[:2])
        repo, rest = self.repos.get(repo_id), path[4:] if path[0] == 'api' else path[2:]
        if repo is None:
            return self._reply(handler, 404, {'error': 'RepoNotFound'}, {'X-Error-Code': 'RepoNotFound'})
        if method == 'GET' and not rest:  # repo_info
            return self._reply(handler, 200, {'id': repo_id, 'private': repo['private'], 'sha': '0' * 40})
        if rest[0] == 'branch':
            repo['branches'][rest[1]] = dict(repo['branches']['main'])
            return self._reply(handler, 200, {})
        if rest[0] == 'preupload':
            return self._reply(handler, 200, {'files': [dict(path=f['path'], uploadMode='regular', shouldIgnore=False)
                                                        for f in json.loads(body)['files']]})
        if rest[0] == 'commit':
            lines = [json.loads(line) for line in body.splitlines() if line.strip()]
            files = {i['value']['path']: base64.b64decode(i['value']['content']) for i in lines if i['key'] == 'file'}
            repo['branches'][rest[1]].update(files)
            self.commits.append(dict(repo_id=repo_id, branch=rest[1], files=sorted(files), message=next(
                i['value']['summary'] for i in lines if i['key'] == 'header')))
            oid = hashlib.sha1(body).hexdigest()
            return self._reply(handler, 200, {'commitUrl': f'{self.url}/{repo_id}/commit/{oid}', 'commitOid': oid})
        if rest[0] == 'resolve':  # file_exists
            data = repo['branches'].get(rest[1], {}).get('/'.join(rest[2:]))
            if data is None:
                return self._reply(handler, 404, {'error': 'EntryNotFound'}, {'X-Error-Code': 'EntryNotFound'})
            etag = f'"{hashlib.sha1(data).hexdigest()}"'
            return self._reply(handler, 200, None, {'X-Repo-Commit': '0' * 40, 'ETag': etag,
                                                    'X-Linked-Size': len(data)})
        return self._reply(handler, 404, {'error': f'FakeHub does not serve {method} {url.path}'})
