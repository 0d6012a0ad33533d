"""serve/app.py (with its batcher, uploads, formats and errors) and `speechwire serve`: the official OpenAI
client against a live server on a random local port (describe_run: test_run.py).

One tiny random run (tiny Whisper + tiny LLM) serves every test; its one-by-one outputs are the
reference each response must equal (batched decoding changes nothing).
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")

from serve.live import LiveServer, audio_files, write_run  # noqa: E402
from speechwire.audio import load_audio  # noqa: E402
from speechwire.longform import split_recording  # noqa: E402
from speechwire.model import SpeechLLM  # noqa: E402
from speechwire.serve.app import create_app  # noqa: E402
from speechwire.serve.run import describe_run  # noqa: E402

from helpers import SR, encode_with_ffmpeg, speech_with_pauses  # noqa: E402

SRT_CUE = re.compile(r"(\d+)\n(\d\d):(\d\d):(\d\d),(\d\d\d) --> (\d\d):(\d\d):(\d\d),(\d\d\d)\n(.+)")


# --- the shared tiny run and live server (tests/serve/live.py) ----------------------------------------

@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    run = write_run(root, ("asr",))
    model = SpeechLLM.from_pretrained(run).eval()
    files = audio_files(root / "audio")
    refs = {f: model.generate([load_audio(f)])[0] for f in files}  # one by one, before serving
    app = create_app(model, describe_run(run, model.cfg), max_batch=8, max_wait_ms=20, max_upload_mb=1)
    with LiveServer(app) as server:
        yield {"root": root, "run": run, "model": model, "files": files, "refs": refs, "server": server, "app": app}


# --- round trips ------------------------------------------------------------------------------------

def test_references_differ_between_files(world):
    assert len(set(world["refs"].values())) >= 12  # else a swapped response could go unnoticed


def test_text_json_and_plain_text_round_trip(world):
    client, f = world["server"].client(), world["files"][1]
    with open(f, "rb") as fh:
        out = client.audio.transcriptions.create(file=fh, model="whatever")
    assert out.text == world["refs"][f]
    with open(f, "rb") as fh:
        text = client.audio.transcriptions.create(file=fh, model="run", response_format="text", language="en",
                                                   prompt="ignored", temperature=0.2)
    assert text == world["refs"][f] + "\n"


def test_silence_answers_empty_text_without_decoding(world, tmp_path):
    """`speechwire serve` (skip_silent): a recording the VAD hears no speech in is not decoded; speech is."""
    pytest.importorskip("silero_vad")
    model = world["model"]
    quiet, spoken = tmp_path / "quiet.wav", tmp_path / "spoken.flac"
    sf.write(quiet, (1e-3 * np.random.default_rng(0).standard_normal(3 * SR)).astype(np.float32), SR)
    speech, _ = speech_with_pauses([])
    sf.write(spoken, speech, SR)
    app = create_app(model, describe_run(world["run"], model.cfg), max_batch=4, skip_silent=True)
    with LiveServer(app) as server:
        client, batcher = server.client(), app.state.batcher
        decoded = sum(n * c for n, c in batcher.batch_sizes.items())
        with open(quiet, "rb") as fh:
            v = client.audio.transcriptions.create(file=fh, model="run", response_format="verbose_json")
        assert (v.text, v.segments, v.duration) == ("", [], 3.0)
        with open(quiet, "rb") as fh:
            events = list(client.audio.transcriptions.create(file=fh, model="run", stream=True))
        assert [e.type for e in events] == ["transcript.text.done"] and events[0].text == ""
        assert sum(n * c for n, c in batcher.batch_sizes.items()) == decoded  # nothing reached the model
        with open(spoken, "rb") as fh:
            assert client.audio.transcriptions.create(file=fh, model="run").text == model.generate([load_audio(spoken)])[0]


@pytest.mark.parametrize("codec, container, name", [("aac", "mp4", "memo.m4a"), ("libopus", "webm", "take.webm")])
def test_a_phones_voice_memo_and_a_browsers_recording_are_read(world, tmp_path, codec, container, name):
    """OpenAI's API takes m4a and webm uploads; so does this server (FFmpeg decodes what libsndfile cannot)."""
    pytest.importorskip("av")
    path = tmp_path / name
    wav = load_audio(world["files"][2])
    encode_with_ffmpeg(path, codec, container, np.stack([wav, 0.5 * wav]), 16000)
    with open(path, "rb") as fh:
        out = world["server"].client().audio.transcriptions.create(file=fh, model="run")
    assert out.text == world["model"].generate([load_audio(path)])[0]


def test_verbose_json_and_srt_give_each_piece_its_times(world, tmp_path):
    pytest.importorskip("silero_vad")
    wav, spans = speech_with_pauses([1.0, 0.7, 1.5, 0.8, 1.2, 0.9, 1.1, 1.0, 0.6, 1.3, 0.8, 1.0, 0.9, 1.4])
    assert len(wav) / SR > 35  # longer than Whisper's 30 s: cut into pieces
    path = tmp_path / "long.flac"
    sf.write(path, wav, SR)
    client = world["server"].client()
    with open(path, "rb") as fh:
        v = client.audio.transcriptions.create(file=fh, model="run", response_format="verbose_json")
    assert v.duration == pytest.approx(len(wav) / SR, abs=1e-3) and v.language == "english"
    assert len(v.segments) >= 2
    starts = [s.start for s in v.segments]
    assert starts == sorted(starts) and all(0 <= s.start < s.end <= v.duration for s in v.segments)
    assert all(s.end - s.start <= 30.0 for s in v.segments)
    model, full = world["model"], load_audio(path)
    pieces = split_recording(full, 30.0)  # what the server does, decoded here one by one
    assert [(s.start, s.end) for s in v.segments] == [(round(p.start_s, 3), round(p.end_s, 3)) for p in pieces]
    expected = [model.generate([full[p.start: p.end]])[0] for p in pieces]
    assert [s.text for s in v.segments] == [e.strip() for e in expected]
    assert v.text == " ".join(e.strip() for e in expected if e.strip())
    with open(path, "rb") as fh:
        srt = client.audio.transcriptions.create(file=fh, model="run", response_format="srt")
    cues = [SRT_CUE.fullmatch(block) for block in srt.strip().split("\n\n")]
    assert all(cues) and [int(c.group(1)) for c in cues] == list(range(1, len(cues) + 1))
    first = cues[0].groups()
    assert int(first[1]) * 3600 + int(first[2]) * 60 + int(first[3]) + int(first[4]) / 1000 == pytest.approx(
        v.segments[0].start, abs=1e-3)
    with open(path, "rb") as fh:
        vtt = client.audio.transcriptions.create(file=fh, model="run", response_format="vtt")
    assert vtt.startswith("WEBVTT\n\n") and "-->" in vtt


# --- concurrency --------------------------------------------------------------------------------------

def test_32_concurrent_requests_match_one_by_one(world):
    client, files, refs = world["server"].client(), world["files"], world["refs"]
    jobs = [files[i % len(files)] for i in range(32)]
    batcher = world["app"].state.batcher
    before = sum(n * c for n, c in batcher.batch_sizes.items())

    def ask(f: Path) -> str:
        with open(f, "rb") as fh:
            return client.audio.transcriptions.create(file=fh, model="run").text

    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(ask, jobs))
    assert answers == [refs[f] for f in jobs]
    assert sum(n * c for n, c in batcher.batch_sizes.items()) - before == 32  # nothing lost or duplicated
    assert max(batcher.batch_sizes) > 1  # they were batched


# --- bad requests: a clear JSON error each, and the server keeps serving -------------------------------

def _error(exc: openai.APIStatusError) -> dict:
    return exc.response.json()["error"]


def _raw(server, body: bytes, content_type: str, path: str = "/v1/audio/transcriptions"):
    client = server.client()
    return client._client.post(server.url + path, content=body, headers={"content-type": content_type})


def _multipart(fields: dict, file: tuple[str, bytes] | None) -> tuple[bytes, str]:
    boundary = "speechwireboundary"
    out = b""
    for k, v in fields.items():
        out += f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
    if file is not None:
        out += (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{file[0]}"\r\n'
                f"Content-Type: application/octet-stream\r\n\r\n").encode() + file[1] + b"\r\n"
    return out + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _wav_bytes(x: np.ndarray, subtype: str = "PCM_16") -> bytes:
    import io

    buf = io.BytesIO()
    sf.write(buf, x, SR, format="WAV", subtype=subtype)
    return buf.getvalue()


def _good_request_works(world) -> None:
    f = world["files"][2]
    with open(f, "rb") as fh:
        assert world["server"].client().audio.transcriptions.create(file=fh, model="run").text == world["refs"][f]


BAD_FILES = {
    "empty": (b"", 400, "empty"),
    "not audio": (b"this is a text file, not a recording\n" * 20, 400, "cannot decode audio"),
    "truncated header": (None, 400, "cannot decode audio"),
    "nan samples": (None, 400, "NaN"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_audio_gets_a_json_400_then_the_server_still_serves(world, case):
    data, status, message = BAD_FILES[case]
    tone = (0.3 * np.sin(np.arange(SR) / 10)).astype(np.float32)
    if case == "truncated header":
        data = _wav_bytes(tone)[:30]
    elif case == "nan samples":
        x = tone.copy()
        x[100:200] = np.nan
        data = _wav_bytes(x, "FLOAT")
    with pytest.raises(openai.BadRequestError) as err:
        world["server"].client().audio.transcriptions.create(file=("bad.wav", data), model="run")
    assert err.value.status_code == status
    e = _error(err.value)
    assert message in e["message"] and e["param"] == "file" and e["type"] == "invalid_request_error"
    assert "Traceback" not in e["message"] and "/tmp" not in e["message"]
    _good_request_works(world)


def test_truncated_wav_is_refused_and_a_streamed_wav_is_not(world):
    tone = (0.3 * np.sin(np.arange(2 * SR) / 10)).astype(np.float32)
    data = _wav_bytes(tone)
    with pytest.raises(openai.BadRequestError) as err:  # header promises 2 s, 0.5 s of samples arrived
        world["server"].client().audio.transcriptions.create(file=("cut.wav", data[: 44 + SR]), model="run")
    assert _error(err.value)["code"] == "truncated_audio" and "cut.wav" in _error(err.value)["message"]
    streamed = data[:40] + b"\xff\xff\xff\xff" + data[44: 44 + SR]  # a streaming writer's "unknown length"
    out = world["server"].client().audio.transcriptions.create(file=("live.wav", streamed), model="run",
                                                               response_format="verbose_json")
    assert out.duration == pytest.approx(0.5, abs=0.01)


def test_request_errors_are_json_and_named(world):
    server, client, f = world["server"], world["server"].client(), world["files"][0]
    with pytest.raises(openai.BadRequestError) as err:
        with open(f, "rb") as fh:
            client.audio.transcriptions.create(file=fh, model="run", response_format="docx")
    assert _error(err.value)["param"] == "response_format" and "srt" in _error(err.value)["message"]
    with pytest.raises(openai.BadRequestError) as err:
        with open(f, "rb") as fh:
            client.audio.transcriptions.create(file=fh, model="run", temperature=7)
    assert _error(err.value)["param"] == "temperature"
    with pytest.raises(openai.BadRequestError) as err:  # an ASR-only run refuses translation clearly
        with open(f, "rb") as fh:
            client.audio.translations.create(file=fh, model="run")
    assert _error(err.value)["code"] == "unsupported_task" and "asr only" in _error(err.value)["message"]
    body, ctype = _multipart({"model": "run"}, None)  # no file
    r = _raw(server, body, ctype)
    assert r.status_code == 400 and r.json()["error"]["code"] == "missing_file"
    r = _raw(server, b'{"file": "x"}', "application/json")  # not a form
    assert r.status_code == 400 and "multipart/form-data" in r.json()["error"]["message"]
    body, ctype = _multipart({"model": "run"}, ("a.wav", b"x"))
    r = _raw(server, body[:-30], ctype)  # the form itself is cut short
    assert r.status_code == 400 and "error" in r.json()
    r = client._client.get(server.url + "/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    _good_request_works(world)


def test_oversize_upload_gets_413(world):
    big = _wav_bytes((0.1 * np.random.default_rng(0).standard_normal(40 * SR)).astype(np.float32))  # 1.3 MB
    with pytest.raises(openai.APIStatusError) as err:
        world["server"].client().audio.transcriptions.create(file=("big.wav", big), model="run")
    assert err.value.status_code == 413 and "--max-upload-mb" in _error(err.value)["message"]
    body, ctype = _multipart({"model": "run"}, ("big.wav", big))  # chunked: no Content-Length to check first
    r = world["server"].client()._client.post(world["server"].url + "/v1/audio/transcriptions",
                                              content=iter([body[i: i + 65536] for i in range(0, len(body), 65536)]),
                                              headers={"content-type": ctype})
    assert r.status_code == 413 and r.json()["error"]["code"] == "upload_too_large"
    _good_request_works(world)


def test_client_disconnecting_mid_upload_does_not_hurt_the_server(world):
    body, ctype = _multipart({"model": "run"}, ("a.wav", _wav_bytes(np.zeros(SR, np.float32))))
    port = int(world["server"].url.rsplit(":", 1)[1])
    for cut in (10, len(body) // 2):
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(f"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\n"
                      f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:cut])
            time.sleep(0.2)
    _good_request_works(world)


# --- the rest of the API --------------------------------------------------------------------------------

def test_models_and_health(world):
    client = world["server"].client()
    models = client.models.list()
    assert [m.id for m in models.data] == [world["run"].name]
    r = client._client.get(world["server"].url + "/health").json()
    assert r["status"] == "ok" and r["tasks"] == ["asr"] and "training manifest" in r["tasks_from"]


def test_translation_run_takes_the_target_language(world):
    run = write_run(world["root"], ("asr", "st"))
    model = SpeechLLM.from_pretrained(run).eval()
    f = world["files"][3]
    want = model.generate([load_audio(f)], task="st", tgt_lang="de")[0]
    with LiveServer(create_app(model, describe_run(run, model.cfg), max_batch=4)) as server:
        client = server.client()
        with open(f, "rb") as fh:  # the run was trained for de only: the default target
            assert client.audio.translations.create(file=fh, model="run").text == want
        with open(f, "rb") as fh:
            v = client.audio.translations.create(file=fh, model="run", response_format="verbose_json",
                                                 extra_body={"target_language": "de"})
        assert v.text == want and v.language == "german"
        with pytest.raises(openai.BadRequestError) as err, open(f, "rb") as fh:
            client.audio.translations.create(file=fh, model="run", extra_body={"target_language": "fr"})
        assert _error(err.value)["param"] == "target_language" and "de" in _error(err.value)["message"]


def test_a_run_for_several_target_languages_needs_target_language(world):
    run = write_run(world["root"], ("st",), tgt_langs=("de", "fr"))
    model = SpeechLLM.from_pretrained(run).eval()
    f = world["files"][3]
    want = model.generate([load_audio(f)], task="st", tgt_lang="fr")[0]
    with LiveServer(create_app(model, describe_run(run, model.cfg), max_batch=4)) as server:
        client = server.client()
        with pytest.raises(openai.BadRequestError) as err, open(f, "rb") as fh:  # no default among two
            client.audio.translations.create(file=fh, model="run")
        e = _error(err.value)
        assert e["code"] == "missing_target_language" and e["param"] == "target_language"
        assert "trained for de, fr" in e["message"]
        with open(f, "rb") as fh:
            assert client.audio.translations.create(file=fh, model="run",
                                                    extra_body={"target_language": "fr"}).text == want


# --- a held model: the queue limit (503), an unexpected error (500), a failed batch retried alone ------

class HeldModel:
    """The tiny run's model behind a gate: `generate` waits while `open` is clear, fails for a batch
    holding a piece of `bad_samples` samples, and logs each call's batch size."""

    def __init__(self, model) -> None:
        self.model, self.calls, self.bad_samples = model, [], None
        self.open, self.entered = threading.Event(), threading.Event()
        self.open.set()

    def __getattr__(self, name: str):  # cfg, encoder, ...: the real model's
        return getattr(self.model, name)

    def generate(self, batch, *args, **kwargs):
        self.entered.set()
        assert self.open.wait(60)
        self.calls.append(len(batch.audio_lengths))
        if self.bad_samples in batch.audio_lengths.tolist():
            raise RuntimeError("this piece breaks the model")
        return self.model.generate(batch, *args, **kwargs)

    def hold(self) -> None:
        self.entered.clear()
        self.open.clear()


def _until(condition, what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


@pytest.fixture(scope="module")
def held(world):
    model = HeldModel(world["model"])
    app = create_app(model, describe_run(world["run"], world["model"].cfg), max_batch=4, max_wait_ms=10, max_queue=2)
    with LiveServer(app) as server:
        yield {"model": model, "batcher": app.state.batcher, "server": server}
    model.open.set()


def _ask(server, f: Path) -> str:
    with open(f, "rb") as fh:
        return server.client().audio.transcriptions.create(file=fh, model="run").text


def test_a_full_queue_gets_503_server_busy_and_the_queued_requests_finish(world, held):
    model, batcher, server, files, refs = held["model"], held["batcher"], held["server"], world["files"], world["refs"]
    model.hold()
    try:
        with ThreadPoolExecutor(3) as pool:
            first = pool.submit(_ask, server, files[0])
            _until(model.entered.is_set, "the first request to reach the model")
            queued = [pool.submit(_ask, server, f) for f in files[1:3]]
            _until(lambda: batcher.waiting == 2, "two queued pieces")
            with pytest.raises(openai.APIStatusError) as err:  # --max-queue 2: the third waiting piece is refused
                _ask(server, files[3])
            model.open.set()
            assert [first.result(), *(q.result() for q in queued)] == [refs[f] for f in files[:3]]
    finally:
        model.open.set()
    assert err.value.status_code == 503
    e = _error(err.value)
    assert e["code"] == "server_busy" and "max_queue=2" in e["message"] and "retry" in e["message"]
    assert _ask(server, files[3]) == refs[files[3]]  # and once the queue drains, it is served


def test_a_failed_batch_is_retried_alone_one_bad_piece_gets_500_internal_error(world, held):
    model, batcher, server, files, refs = held["model"], held["batcher"], held["server"], world["files"], world["refs"]
    bad, good = files[4], files[5]
    model.hold()
    model.bad_samples = len(load_audio(bad))
    try:
        with ThreadPoolExecutor(3) as pool:
            first = pool.submit(_ask, server, files[0])
            _until(model.entered.is_set, "the first request to reach the model")
            calls = len(model.calls)
            answers = [pool.submit(_ask, server, f) for f in (bad, good)]
            _until(lambda: batcher.waiting == 2, "the two pieces queued together")
            model.open.set()
            assert first.result() == refs[files[0]] and answers[1].result() == refs[good]
            with pytest.raises(openai.InternalServerError) as err:
                answers[0].result()
    finally:
        model.open.set()
        model.bad_samples = None
    assert model.calls[calls + 1:] == [2, 1, 1]  # the batch of both failed; each was decoded alone
    e = _error(err.value)
    assert err.value.status_code == 500 and e["code"] == "internal_error" and e["type"] == "server_error"
    assert "RuntimeError" in e["message"] and "server log" in e["message"] and "breaks" not in e["message"]
    assert _ask(server, bad) == refs[bad]  # the server keeps serving


@pytest.mark.slow
def test_speechwire_serve_command(world):
    """The real command line: `speechwire serve RUN --port 0` prints its address and answers."""
    proc = subprocess.Popen([sys.executable, "-m", "speechwire.cli", "serve", str(world["run"]), "--port", "0",
                             "--max-batch", "4", "--log-level", "warning"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = None
        deadline = time.monotonic() + 120
        while url is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line or proc.poll() is None, "server exited"
            m = re.search(r"listening on (http://\S+)", line)
            url = m.group(1) if m else None
        assert url, "no address printed"
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
        for _ in range(100):  # the socket is bound before uvicorn starts accepting
            try:
                client._client.get(url + "/health")
                break
            except Exception:  # noqa: BLE001
                time.sleep(0.1)
        f = world["files"][5]  # a hum in noise: no speech, so the command answers empty text undecoded
        with open(f, "rb") as fh:
            assert client.audio.transcriptions.create(file=fh, model="run").text == ""
        spoken = world["root"] / "spoken.flac"
        sf.write(spoken, speech_with_pauses([])[0], SR)
        with open(spoken, "rb") as fh:
            assert client.audio.transcriptions.create(file=fh, model="run").text == \
                world["model"].generate([load_audio(spoken)])[0]
    finally:
        proc.terminate()
        proc.wait(30)

