"""The page at / (serve/static/index.html) in a real browser: Playwright driving Debian's chromium, whose
fake microphone plays a test wav. Record -> stop -> the streamed text equals the API's answer for the
same audio; a picked file (transcribed and translated); a non-audio file shows the server's message;
a server with an API key asks for it once.

Playwright's own browser download is not used (not reachable here): chromium comes from
scripts/install_system_deps.sh.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e .[dev])")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip("chromium is not installed (scripts/install_system_deps.sh installs it)", allow_module_level=True)

from serve.live import LiveServer, audio_files, write_run  # noqa: E402
from speechwire.audio import load_audio  # noqa: E402
from speechwire.model import SpeechLLM  # noqa: E402
from speechwire.serve.app import create_app  # noqa: E402
from speechwire.serve.run import describe_run  # noqa: E402

KEY = "page-test-key-81d2"
# Records what the page uploads (the WAV it made from the recording) so the test can send the same bytes.
CAPTURE_UPLOADS = """
window.__uploads = [];
const realFetch = window.fetch;
window.fetch = async (url, options) => {
  if (options && options.body instanceof FormData) {
    const file = options.body.get("file");
    window.__uploads.push(Array.from(new Uint8Array(await file.arrayBuffer())));
  }
  return realFetch(url, options);
};
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("page")
    run = write_run(root, ("asr", "st"), max_new_tokens=12)
    model = SpeechLLM.from_pretrained(run).eval()
    mic = root / "mic.wav"  # what the fake microphone plays, in a loop
    t = np.arange(3 * 16000) / 16000
    sf.write(mic, (0.3 * np.sin(2 * np.pi * 220 * t) * np.sin(2 * np.pi * 0.7 * t)).astype(np.float32), 16000,
             subtype="PCM_16")
    info = describe_run(run, model.cfg)
    with LiveServer(create_app(model, info, max_batch=4)) as open_server, \
            LiveServer(create_app(model, info, max_batch=4, api_key=KEY)) as locked_server, \
            LiveServer(create_app(model, info, max_batch=4, skip_silent=True)) as quiet_server, \
            sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
            "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={mic}"])
        yield {"root": root, "model": model, "server": open_server, "locked": locked_server, "quiet": quiet_server,
               "browser": browser,
               "files": audio_files(root / "audio", n=4)}
        browser.close()


def _open(world, server):
    page = world["browser"].new_page()
    page.add_init_script(CAPTURE_UPLOADS)
    page.goto(server.url + "/")
    return page


def _finished(page, timeout_ms: float = 20000) -> None:
    page.wait_for_function("document.getElementById('status').textContent.startsWith('done') "
                           "|| document.getElementById('error').textContent !== ''", timeout=timeout_ms)


def _api_text(server, data: bytes, name: str, **kwargs) -> str:
    client = server.client()
    if kwargs:
        return client.audio.translations.create(file=(name, data), model="run", extra_body=kwargs).text
    return client.audio.transcriptions.create(file=(name, data), model="run").text


def test_record_stop_and_the_streamed_text_is_the_apis_answer(world):
    page = _open(world, world["server"])
    page.wait_for_selector("#model:has-text('model')")
    page.click("#record")
    page.wait_for_selector("#stop:enabled")
    page.wait_for_timeout(1200)
    page.click("#stop")
    _finished(page)
    assert page.text_content("#error") == ""
    uploaded = bytes(page.evaluate("window.__uploads[0]"))
    wav, rate = sf.read(__import__("io").BytesIO(uploaded))
    assert rate == 16000 and wav.ndim == 1 and 0.8 < len(wav) / rate < 3.0  # the page made 16 kHz mono WAV
    assert np.abs(wav).max() > 0.05  # the fake microphone's tone, not silence
    assert page.text_content("#transcript") == _api_text(world["server"], uploaded, "recording.wav")
    meta = page.text_content("#meta")
    assert "audio " in meta and "full text after" in meta
    page.close()


def test_a_picked_file_is_transcribed_and_translated(world):
    page = _open(world, world["server"])
    page.wait_for_selector("#model:has-text('model')")
    f = world["files"][1]
    page.set_input_files("#file", str(f))
    _finished(page)
    want = world["model"].generate([load_audio(f)])[0]
    assert page.text_content("#transcript") == want == _api_text(world["server"], f.read_bytes(), f.name)
    page.check("#task-translate")
    assert page.input_value("#target") == "de"  # the run's one target language
    page.set_input_files("#file", str(f))
    page.wait_for_function("document.getElementById('status').textContent !== 'done'")
    _finished(page)
    assert page.text_content("#transcript") == world["model"].generate([load_audio(f)], task="st", tgt_lang="de")[0]
    page.close()


def test_a_recording_without_speech_says_so(world):
    """`speechwire serve` answers a recording without speech with empty text (skip_silent); the page says
    why nothing appeared (a muted microphone looks just like this)."""
    pytest.importorskip("silero_vad")
    quiet = world["root"] / "muted.wav"
    sf.write(quiet, (1e-4 * np.random.default_rng(0).standard_normal(2 * 16000)).astype(np.float32), 16000)
    page = _open(world, world["quiet"])
    page.wait_for_selector("#model:has-text('model')")
    page.set_input_files("#file", str(quiet))
    _finished(page)
    assert (page.text_content("#status"), page.text_content("#transcript"), page.text_content("#error")) == \
        ("done: no speech heard", "", "")
    page.close()


def test_a_non_audio_file_shows_the_servers_message(world):
    notes = world["root"] / "notes.txt"
    notes.write_text("these are meeting notes, not a recording\n" * 20)
    with pytest.raises(openai.BadRequestError) as err:
        _api_text(world["server"], notes.read_bytes(), notes.name)
    page = _open(world, world["server"])
    page.wait_for_selector("#model:has-text('model')")
    page.set_input_files("#file", str(notes))
    _finished(page)
    assert page.text_content("#error") == err.value.response.json()["error"]["message"]
    assert "notes.txt" in page.text_content("#error") and page.text_content("#transcript") == ""
    page.close()


def test_a_locked_server_asks_for_the_key_once(world):
    server = world["locked"]
    context = world["browser"].new_context()
    page = context.new_page()
    page.goto(server.url + "/")
    page.wait_for_selector("#key-form", state="visible")
    assert "API key" in page.text_content("#error")
    page.fill("#key", KEY)
    page.click("#key-save")
    page.wait_for_selector("#key-form", state="hidden")
    page.reload()  # the key is kept: no second question
    page.wait_for_selector("#model:has-text('model')")
    assert not page.is_visible("#key-form")
    f = world["files"][2]
    page.set_input_files("#file", str(f))
    _finished(page)
    assert page.text_content("#transcript") == _api_text_with_key(server, f)
    context.close()


def _api_text_with_key(server, f) -> str:
    return server.client(api_key=KEY).audio.transcriptions.create(file=(f.name, f.read_bytes()), model="run").text
