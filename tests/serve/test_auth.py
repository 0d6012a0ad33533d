"""serve/auth.py and `speechwire serve --api-key-file PATH --open`: 401 in OpenAI's shape without the right
key, the `openai` client's api_key works (plain and streaming), the page stays open, the key appears in
no log line; error messages echo at most ~80 characters of a client's value.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import httpx2
import pytest

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")

from serve.live import LiveServer, audio_files, write_run  # noqa: E402
from speechwire.cli import main  # noqa: E402
from speechwire.model import SpeechLLM  # noqa: E402
from speechwire.serve.app import create_app  # noqa: E402
from speechwire.serve.auth import ApiKeyError, read_api_key  # noqa: E402
from speechwire.serve.run import describe_run  # noqa: E402

KEY = "sk-speechwire-test-3f9a7c21d0"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("auth")
    run = write_run(root, ("asr",))
    model = SpeechLLM.from_pretrained(run).eval()
    files = audio_files(root / "audio", n=2)
    ref = model.generate([__import__("speechwire.audio", fromlist=["load_audio"]).load_audio(files[0])])[0]
    with LiveServer(create_app(model, describe_run(run, model.cfg), api_key=KEY)) as server:
        yield {"root": root, "run": run, "files": files, "ref": ref, "server": server}


def test_no_key_or_a_wrong_key_gets_401_in_openais_shape(world):
    server, f = world["server"], world["files"][0]
    r = httpx2.post(server.url + "/v1/audio/transcriptions", files={"file": ("a.wav", f.read_bytes())})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    error = r.json()["error"]
    assert error["code"] == "invalid_api_key" and error["type"] == "invalid_request_error"
    assert "Authorization: Bearer" in error["message"]
    with pytest.raises(openai.AuthenticationError) as err:
        server.client(api_key=KEY + "x").audio.transcriptions.create(file=f, model="run")
    assert err.value.status_code == 401 and KEY not in err.value.response.text  # a wrong key is not echoed
    for path in ("/v1/models", "/health"):
        assert httpx2.get(server.url + path).status_code == 401
        assert httpx2.get(server.url + path, headers={"Authorization": KEY}).status_code == 401  # no "Bearer"


def test_the_right_key_gets_the_answer_plain_and_streamed(world):
    client, f = world["server"].client(api_key=KEY), world["files"][0]
    assert client.audio.transcriptions.create(file=f, model="run").text == world["ref"]
    events = list(client.audio.transcriptions.create(file=f, model="run", stream=True))
    assert events[-1].text == world["ref"]
    assert [m.id for m in client.models.list().data] == [world["run"].name]


def test_the_page_is_open_without_a_key(world):
    r = httpx2.get(world["server"].url + "/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "getUserMedia" in r.text and "MediaRecorder" in r.text
    assert not re.search(r"""(src|href)=["']https?://""", r.text)  # nothing fetched from elsewhere (works offline)


def test_key_files_that_cannot_serve_are_refused_clearly(tmp_path):
    good = tmp_path / "key"
    good.write_text(f"  {KEY}\n")
    assert read_api_key(good) == KEY
    for content, words in (("", "empty"), ("two words\n", "one line"), ("a\nb\n", "one line")):
        bad = tmp_path / "bad"
        bad.write_text(content)
        with pytest.raises(ApiKeyError, match=words):
            read_api_key(bad)
    with pytest.raises(ApiKeyError, match="no such file.*secrets"):
        read_api_key(tmp_path / "missing")


def test_serve_with_a_missing_key_file_fails_in_one_line_before_loading(world, capsys):
    assert main(["serve", str(world["run"]), "--api-key-file", str(world["root"] / "nope")]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--api-key-file" in err and "no such file" in err


def test_error_messages_echo_at_most_80_characters_of_a_clients_value(world):
    client, f = world["server"].client(api_key=KEY), world["files"][0]
    long = "x" * 100_000
    for field in ("language", "response_format", "temperature", "stream"):
        with pytest.raises(openai.BadRequestError) as err:
            client.audio.transcriptions.create(file=f, model="run", extra_body={field: long})
        message = err.value.response.json()["error"]["message"]
        assert len(message) < 300 and "x" * 80 in message and "x" * 81 not in message, field
        assert "100000 characters" in message
    with pytest.raises(openai.BadRequestError) as err:
        client.audio.transcriptions.create(file=("n" * 500 + ".txt", b"not audio"), model="run")
    message = err.value.response.json()["error"]["message"]
    assert max(len(run) for run in re.findall("n+", message)) == 80  # each mention of the name clipped
    assert "504 characters" in message and len(message) < 1000


@pytest.mark.slow
def test_speechwire_serve_api_key_file_and_open(world, tmp_path):
    """The real command line with --api-key-file and --open: the page's URL printed and opened ($BROWSER),
    401 without the key, the answer with it, and the key in no line of a debug-level log."""
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    key_file.chmod(0o600)
    opened = tmp_path / "opened"
    browser = tmp_path / "browser"
    browser.write_text(f'#!/bin/sh\necho "$1" > {opened}\n')
    browser.chmod(0o755)
    env = dict(os.environ, BROWSER=str(browser))
    proc = subprocess.Popen([sys.executable, "-m", "speechwire.cli", "serve", str(world["run"]), "--port", "0",
                             "--api-key-file", str(key_file), "--open", "--log-level", "debug",
                             "--decode-silence"],  # the test clip is a tone: decode it all the same
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines = []
    try:
        url = page = None
        deadline = time.monotonic() + 120
        while url is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line or proc.poll() is None, "server exited:\n" + "".join(lines)
            lines.append(line)
            m = re.search(r"listening on (http://\S+) \(the page: (http://\S+?), API key required\)", line)
            url, page = (m.group(1), m.group(2)) if m else (None, None)
        assert url and page == url + "/", "".join(lines)
        for _ in range(200):  # the socket is bound before uvicorn starts accepting
            if httpx2.get(url + "/").status_code == 200:
                break
            time.sleep(0.1)
        f = world["files"][0]
        assert httpx2.post(url + "/v1/audio/transcriptions", files={"file": ("a.wav", f.read_bytes())}).status_code == 401
        wrong = openai.OpenAI(base_url=url + "/v1", api_key="wrong-key", max_retries=0, timeout=60)
        with pytest.raises(openai.AuthenticationError):
            wrong.models.list()
        client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=60)
        assert client.audio.transcriptions.create(file=f, model="run").text == world["ref"]
        for _ in range(100):
            if opened.exists():
                break
            time.sleep(0.05)
        assert opened.read_text().strip() == page
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
        lines.append(out)
    log = "".join(lines)
    assert "POST /v1/audio/transcriptions" in log  # the debug log saw the requests...
    assert KEY not in log  # ...and never the key
