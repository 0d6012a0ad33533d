"""`speechwire serve`: any run folder behind OpenAI-compatible transcription/translation endpoints.

    batcher.py  one worker thread owns the model; concurrent pieces decode as one batch
    app.py      FastAPI endpoints (/v1/audio/transcriptions, /v1/audio/translations, /v1/models, /health, the page /)
    stream.py   stream=true: settled text per decoding step -> OpenAI's server-sent events
    auth.py     --api-key-file: `Authorization: Bearer KEY` on every request but the page
    static/     index.html, the page: record or drop a file, the text streams in (no build step, works offline)
    formats.py  json | text | verbose_json | srt | vtt bodies
    errors.py   OpenAI-shaped JSON errors, the upload-size limit
    run.py      the run's model id and the tasks it was trained for
    upload.py   uploaded bytes -> validated waveform + pieces
    server.py   run_server (model loading, uvicorn on a socket we bind, port 0), or a background thread
                (notebooks, tests); the `serve` command's flags are in speechwire/cli.py

Needs fastapi, uvicorn and python-multipart (installed with speechwire). Usage: docs/serving.md.
"""
