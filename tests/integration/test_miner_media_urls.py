"""A miner in front of a model server does not have it fetch a caller's media URL on a private address.

vLLM's and SGLang's servers fetch an ``image_url`` (``video_url``, ``audio_url``) part's URL themselves, from
inside the miner's network. A caller (anyone with a key on any validator's API) naming ``http://127.0.0.1:...``,
a ``10.x`` address, the cloud metadata address or a ``file:`` URL had the miner's model server fetch it: a
server-side request forgery. The miner refuses such a request as its model server would (``400``, the caller's
fault: no miner is marked down for it) and the model server is never asked; a public or ``data:`` URL is
forwarded as before.
"""

from __future__ import annotations

from pathlib import Path

import aiohttp

from tests.integration.test_miner_openai_backend import post_chat, stack

PNG = "data:image/png;base64,iVBORw0KGgo="


def with_image(url: str, part: str = "image_url") -> dict:
    return {"messages": [{"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                                      {"type": part, part: {"url": url}}]}], "seed": 3}


async def test_private_and_file_media_urls_never_reach_the_model_server(tmp_path: Path) -> None:
    received: list = []
    async with stack(tmp_path, received) as (api, key), aiohttp.ClientSession() as s:
        host, port = api.removeprefix("http://").split(":")
        for url, part in ((f"http://127.0.0.1:{port}/v1/models", "image_url"),
                          ("http://localhost/secret.png", "image_url"),
                          ("http://169.254.169.254/latest/meta-data/iam/security-credentials/", "image_url"),
                          ("http://10.0.0.5:8000/internal.png", "image_url"),
                          ("http://[::1]:8000/a.png", "image_url"),
                          ("http://[::ffff:192.168.1.1]/a.png", "image_url"),
                          ("file:///etc/passwd", "image_url"),
                          ("http://100.64.0.1/cgnat.png", "image_url")):
            for stream in (False, True):
                status, answer = await post_chat(s, api, key, with_image(url, part) | {"stream": stream})
                assert status == 400, (url, stream, answer)
                assert "private address" in answer["error"]["message"] or "scheme" in answer["error"]["message"]
        assert received == [], "the model server was asked to fetch a private URL"
        for url in (PNG, "https://93.184.215.14/a.png"):  # data:, and a public address: forwarded as before
            status, answer = await post_chat(s, api, key, with_image(url))
            assert status == 200, (url, answer)
        assert len(received) == 2
