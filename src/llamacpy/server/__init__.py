"""`llamacpy serve`'s HTTP layer: FastAPI routes shaped as llama-server b4748's and the OpenAI API's, in front of
the batching engine (llamacpy.engine). It translates shapes and streams; it never runs the model itself.

    app.py      the application, the gate (loading / auth / body cap / CORS), error shapes, the web page
    routes.py   one handler per route
    generate.py submit to the engine, collect or stream, cancel on disconnect
    params.py   request validation and the sampler-field table
    responses.py response shapes
    stream.py   engine thread -> asyncio bridge, SSE
    metrics.py  Prometheus text with llama-server's metric names
    state.py    settings and the background model load
"""
