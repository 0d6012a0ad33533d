"""serve/stream.py and `stream=true`: settled text (never taken back), OpenAI's events through the `openai`
client against a live server, batching with streams in the batch, a client leaving mid-stream, errors.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import httpx2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")

from serve.live import LiveServer, audio_files, write_run  # noqa: E402
from speechwire.audio import load_audio  # noqa: E402
from speechwire.decoding import clean_answer, loop_cut  # noqa: E402
from speechwire.model import SpeechLLM  # noqa: E402
from speechwire.serve.app import create_app  # noqa: E402
from speechwire.serve.run import describe_run  # noqa: E402
from speechwire.serve.stream import SettledText, loop_safe_length  # noqa: E402

# --- settled text: what streams is never taken back -----------------------------------------------

def _decode_loop(tokens: list, max_repeats: int) -> list[list]:
    """The answers a greedy loop holds after each step (model._decode's stop rule), ending at a loop cut."""
    steps, answer = [], []
    for t in tokens:
        answer.append(t)
        cut = loop_cut(answer, max_repeats)
        if cut is not None:
            del answer[cut:]
            steps.append(list(answer))
            break
        steps.append(list(answer))
    return steps


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 3), max_size=40), st.integers(1, 3))
def test_loop_safe_prefix_is_never_cut_later(tokens, max_repeats):
    steps = _decode_loop(tokens, max_repeats)
    final = steps[-1] if steps else []
    for answer in steps:
        safe = loop_safe_length(answer, max_repeats)
        assert answer[:safe] == final[:safe], (answer, safe, final)


def test_loop_safe_length_holds_back_a_growing_copy():
    assert loop_safe_length([1, 2, 1, 2, 1], max_repeats=2) == 4  # a third "1 2" may be under way
    assert loop_safe_length([1, 2, 1, 2, 3], max_repeats=2) == 5
    assert loop_safe_length([5, 5, 5], max_repeats=0) == 3  # no loop cut, nothing held


PIECES = ['"', "Sure", ",", " here", " it", " is", ":", " ", "Hello", " world", ".", '"', " the", " cat",
          " sat", " on", " mat", "\n", "é", " ok"]


class WordModel:
    """A stand-in for SpeechLLM's text side: token i is the string PIECES[i]; answers are quoted with '"'."""

    cfg = SimpleNamespace(eval=SimpleNamespace(max_repeats=2))
    prompter = SimpleNamespace(decode=lambda ids: "".join(PIECES[i] for i in ids))

    def answer_text(self, ids):
        return clean_answer(self.prompter.decode(ids), '"')


LOOPY = [PIECES.index(p) for p in (" cat", " sat", " on")]  # few words: greedy loops of several words come often


@settings(max_examples=400, deadline=None)
@given(st.lists(st.integers(0, len(PIECES) - 1), max_size=30) | st.lists(st.sampled_from(LOOPY), max_size=30))
def test_settled_text_is_always_a_prefix_of_the_final_text(ids):
    model = WordModel()
    settled = SettledText(model)
    steps = _decode_loop(ids, 2)
    final = model.answer_text(steps[-1]) if steps else ""
    for answer in steps:
        assert final.startswith(settled(answer)), (answer, settled(answer), final)


def test_settled_text_streams_words_and_holds_a_preamble():
    model, settled = WordModel(), SettledText(WordModel())
    ids = [PIECES.index(p) for p in ['"', "Hello", " world", " the", " cat", '"']]
    assert [settled(ids[:k]) for k in range(1, len(ids) + 1)] == ["", "", "Hello", "Hello world", "Hello world the",
                                                                 "Hello world the"]
    assert model.answer_text(ids) == "Hello world the cat"
    loop = [PIECES.index(p) for p in [" cat", " sat", " on"] * 3]  # max_repeats=2: the third copy is cut
    assert settled(loop[:8]) == "cat sat on cat sat"  # not "... on cat": that copy goes when it completes
    assert model.answer_text(_decode_loop(loop, 2)[-1]) == "cat sat on cat sat on"
    sure = [PIECES.index(p) for p in ["Sure", ",", " here", " it", " is", ":", " the", " cat", " sat"]]
    assert [settled(sure[:k]) for k in range(1, len(sure) + 1)] == [""] * 7 + ["the", "the cat"]


# --- live: the openai client's streaming call -------------------------------------------------------

@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    run = write_run(root, ("asr", "st"), max_new_tokens=24)
    model = SpeechLLM.from_pretrained(run).eval()
    files = audio_files(root / "audio", n=8)
    refs = {f: model.generate([load_audio(f)])[0] for f in files}
    app = create_app(model, describe_run(run, model.cfg), max_batch=8, max_wait_ms=20)
    with LiveServer(app) as server:
        yield {"root": root, "run": run, "model": model, "files": files, "refs": refs, "server": server, "app": app}


def _stream(client, f, **kwargs) -> list:
    with open(f, "rb") as fh:
        return list(client.audio.transcriptions.create(file=fh, model="run", stream=True, **kwargs))


def test_streamed_deltas_then_done_equal_the_plain_answer(world):
    client = world["server"].client()
    for f in world["files"][:4]:
        events = _stream(client, f)
        types = [e.type for e in events]
        assert types[-1] == "transcript.text.done" and set(types[:-1]) <= {"transcript.text.delta"}
        done = events[-1]
        assert "".join(e.delta for e in events[:-1]) == done.text == world["refs"][f]
        with open(f, "rb") as fh:
            assert client.audio.transcriptions.create(file=fh, model="run").text == done.text
        if done.text:
            assert len(events) >= 2  # at least one delta before done
        assert done.usage.type == "duration" and done.usage.seconds == int(-(-len(load_audio(f)) // 16000))


def test_text_streams_while_the_piece_still_decodes(world):
    """A model that decodes 'hello world how are you' one word per step and waits between steps: the
    first words arrive as events before the last step is taken."""
    model = ScriptedModel(world["model"], "hello world how are you today")
    app = create_app(model, describe_run(world["run"], world["model"].cfg), max_batch=4)
    with LiveServer(app) as server:
        with open(world["files"][0], "rb") as fh:
            events = iter(server.client().audio.transcriptions.create(file=fh, model="run", stream=True))
            first = next(events)
            assert first.type == "transcript.text.delta" and first.delta == "hello"
            assert model.step < len(model.ids)  # decoding is not over
            model.go.set()
            rest = list(events)
    assert "".join([first.delta] + [e.delta for e in rest[:-1]]) == rest[-1].text == "hello world how are you today"


def test_streaming_requests_batch_with_plain_ones(world):
    client, files, refs = world["server"].client(), world["files"], world["refs"]
    batcher = world["app"].state.batcher
    before = dict(batcher.batch_sizes)

    def ask(i: int) -> str:
        f = files[i % len(files)]
        if i % 2:
            events = _stream(client, f)
            assert "".join(e.delta for e in events[:-1]) == events[-1].text
            return events[-1].text
        with open(f, "rb") as fh:
            return client.audio.transcriptions.create(file=fh, model="run").text

    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(ask, range(12)))
    assert answers == [refs[files[i % len(files)]] for i in range(12)]
    new = {k: v - before.get(k, 0) for k, v in batcher.batch_sizes.items() if v - before.get(k, 0)}
    assert max(new) > 1  # streams and plain requests decoded in one batch


def test_translation_streams_too(world):
    f = world["files"][2]
    want = world["model"].generate([load_audio(f)], task="st", tgt_lang="de")[0]
    server = world["server"]
    with open(f, "rb") as fh:
        r = httpx2.post(server.url + "/v1/audio/translations", files={"file": ("a.flac", fh.read())},
                        data={"model": "run", "stream": "true", "target_language": "de"}, timeout=60)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == {"type": "transcript.text.done", "text": want, "usage": events[-1]["usage"]}
    assert "".join(e["delta"] for e in events[:-1]) == want


def test_bad_audio_or_fields_with_stream_get_the_usual_json_error(world):
    client = world["server"].client()
    with pytest.raises(openai.BadRequestError) as err:
        client.audio.transcriptions.create(file=("bad.wav", b"not audio at all" * 10), model="run", stream=True)
    assert err.value.response.headers["content-type"] == "application/json"
    assert err.value.response.json()["error"]["code"] == "invalid_audio"
    with pytest.raises(openai.BadRequestError) as err, open(world["files"][0], "rb") as fh:
        client.audio.transcriptions.create(file=fh, model="run", stream=True, response_format="srt")
    assert "cannot stream" in err.value.response.json()["error"]["message"]
    r = httpx2.post(world["server"].url + "/v1/audio/transcriptions", files={"file": ("a.wav", b"x")},
                    data={"stream": "maybe"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "stream"


# --- a scripted model: a client leaving mid-stream, an error mid-stream ------------------------------

class ScriptedModel:
    """The tiny run's model, except that `generate` spells `text` one word per step through on_step,
    pausing after the second step (when the first word has settled) until `go` is set; it fails at
    step `fail_at` when that is set."""

    def __init__(self, model, text: str, fail_at: int | None = None) -> None:
        self.model, self.fail_at = model, fail_at
        tok = model.prompter.tok
        words = text.split(" ")
        self.ids = [tok.encode((" " if i else "") + w, add_special_tokens=False) for i, w in enumerate(words)]
        self.go, self.step, self.stopped = threading.Event(), 0, []

    def __getattr__(self, name: str):
        return getattr(self.model, name)

    def generate(self, batch, on_step=None):
        B, answer = len(batch.audio_lengths), []
        live = set(range(B))
        for self.step, word in enumerate(self.ids, 1):
            if self.step == self.fail_at:
                raise RuntimeError("the model broke mid-answer")
            answer += word
            stop = set(on_step([list(answer) if b in live else [] for b in range(B)]) or ()) if on_step else set()
            self.stopped += sorted(stop)
            live -= stop
            if not live:
                break
            if self.step == 2:
                assert self.go.wait(60)
        return [self.model.answer_text(answer)] * B


def test_a_client_leaving_mid_stream_frees_its_place_and_the_server_serves_on(world):
    model = ScriptedModel(world["model"], "one two three four five six seven eight")
    app = create_app(model, describe_run(world["run"], world["model"].cfg), max_batch=4)
    with LiveServer(app) as server:
        with open(world["files"][0], "rb") as fh:
            stream = server.client().audio.transcriptions.create(file=fh, model="run", stream=True)
            assert next(iter(stream)).delta == "one"
            stream.close()  # the client goes away with the piece mid-decoding
        deadline = time.monotonic() + 30
        while app.state.streams and time.monotonic() < deadline:  # the server noticed
            time.sleep(0.02)
        assert server.client()._client.get(server.url + "/health").json()["open_streams"] == 0
        model.go.set()
        while not model.stopped and time.monotonic() < deadline:
            time.sleep(0.02)
        assert model.stopped == [0] and model.step == 3 < len(model.ids)  # stopped at the next step
        assert app.state.batcher.waiting == 0
        model.go.set()
        with open(world["files"][1], "rb") as fh:
            assert server.client().audio.transcriptions.create(file=fh, model="run").text == \
                "one two three four five six seven eight"


def test_an_error_mid_stream_is_an_error_event_and_the_server_serves_on(world):
    model = ScriptedModel(world["model"], "one two three four", fail_at=3)
    model.go.set()
    app = create_app(model, describe_run(world["run"], world["model"].cfg), max_batch=4)
    with LiveServer(app) as server:
        client = server.client()
        seen = []
        with pytest.raises(openai.APIError) as err, open(world["files"][0], "rb") as fh:
            for event in client.audio.transcriptions.create(file=fh, model="run", stream=True):
                seen.append(event)
        assert [e.delta for e in seen] == ["one"]  # streamed before the failure
        assert "RuntimeError" in err.value.message and "server log" in err.value.message
        assert "broke" not in err.value.message  # the details stay in the log
        model.fail_at = None
        with open(world["files"][0], "rb") as fh:
            assert client.audio.transcriptions.create(file=fh, model="run").text == "one two three four"
