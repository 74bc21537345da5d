"""``markup2im demo``: the page in headless Chromium (type, Draw, both images and the scores; a
broken formula shows the renderer's error), the model's domain, and the install hint without
Gradio."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from chromium import CHROMIUM, Chromium
from inference_helpers import pixels, save_untrained_model

from markup2im.cli import main
from markup2im.demo import Demo, model_domain
from markup2im.errors import ConfigError

START_TIMEOUT = 300  # seconds for the server to answer (imports, model, first page)
DRAW_TIMEOUT = 300  # seconds for a drawing to appear (the first one compiles the metrics)
FORMULA = r"x^2+y_1"
BROKEN = "\\frac{"


def test_without_gradio_it_says_how_to_install(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "gradio", None)  # `import gradio` raises ImportError
    code = main(["demo", "--model-dir", str(tmp_path / "model")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "pip install -r requirements-demo-lock.txt" in err and "markup2im[demo]" in err


def test_the_domain_comes_from_the_model_then_the_flag_then_math(tmp_path: Path) -> None:
    (tmp_path / "markup2im_model.json").write_text(json.dumps({"format_version": 1}))
    assert model_domain(tmp_path) == "math"
    assert model_domain(tmp_path, "molecules") == "molecules"
    (tmp_path / "original_checkpoint.json").write_text(json.dumps({"domain": "music"}))
    assert model_domain(tmp_path) == "music"
    assert model_domain(tmp_path, "music") == "music"
    with pytest.raises(ConfigError, match="records domain 'music'"):
        model_domain(tmp_path, "tables")


# ---- the page ----------------------------------------------------------------------------------


def free_port() -> int:
    """A port nobody listens on now (it may be taken again before the demo binds it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def answers(url: str) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=5) as reply:
            return reply.status == 200
    except OSError:
        return False


def stop(proc: subprocess.Popen) -> None:
    """End the demo and everything it started (its process group)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)


def start_demo(
    model_dir: Path, tmp_path: Path, **environ: str
) -> tuple[subprocess.Popen, str, Path]:
    """Start the demo on a free port (``environ`` added to its environment); another port
    when that one was taken meanwhile."""
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env.update(NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost", **environ)
    for attempt in range(3):
        port = free_port()
        log = tmp_path / f"demo-{attempt}.log"
        with log.open("wb") as handle:
            proc = subprocess.Popen(
                [sys.executable, "-m", "markup2im", "demo", "--model-dir", str(model_dir),
                 "--port", str(port)],
                cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, stdout=handle,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        url = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + START_TIMEOUT
        try:
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    break
                if answers(url):
                    return proc, url, log
                time.sleep(0.5)
        except BaseException:
            stop(proc)
            raise
        stop(proc)
        text = log.read_text(errors="replace")
        if proc.returncode is not None and "cannot serve the demo" in text:
            continue  # the port was taken between free_port() and the bind: another one
        pytest.fail(f"the demo did not start within {START_TIMEOUT} s:\n{text[-3000:]}")
    pytest.fail("the demo found no free port in 3 tries")


def image_shown(element_id: str) -> str:
    return (
        f"(() => {{ const i = document.querySelector('#{element_id} img');"
        " return !!(i && i.complete && i.naturalWidth > 0) && i.src; })()"
    )


def text_of(element_id: str) -> str:
    return f"(document.querySelector('#{element_id}') || {{innerText: ''}}).innerText"


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")
def test_page_draws_beside_the_renderer_and_shows_its_errors(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    pytest.importorskip("gradio", reason="needs the demo extra (requirements-demo-lock.txt)")
    proc, url, log = start_demo(tiny_model_dir, tmp_path)
    browser = None
    try:
        browser = Chromium("about:blank", tmp_path / "chromium-profile")
        browser.watch_requests()
        browser.goto(url)
        browser.wait_for("!!document.querySelector('#m2i-markup textarea')", START_TIMEOUT)
        # the examples of the model's domain are on the page
        assert browser.wait_for("document.body.innerText.includes('Examples')")
        browser.type_into("#m2i-markup textarea", FORMULA)
        browser.click("#m2i-draw")
        model_src = browser.wait_for(image_shown("m2i-model"), DRAW_TIMEOUT)
        browser.wait_for(image_shown("m2i-rendered"), DRAW_TIMEOUT)
        gif_src = browser.wait_for(image_shown("m2i-animation"), DRAW_TIMEOUT)
        assert ".gif" in gif_src, gif_src
        scores = browser.wait_for(
            f"(() => {{ const t = {text_of('m2i-scores')}; return /DTW \\d/.test(t) && t; }})()",
            DRAW_TIMEOUT,
        )
        assert "SSIM" in scores and "No scores" not in scores, scores
        dtw = float(browser.evaluate("document.querySelector('#m2i-dtw').innerText"))
        ssim = float(browser.evaluate("document.querySelector('#m2i-ssim').innerText"))
        assert dtw >= 0 and -1 <= ssim <= 1
        assert not browser.evaluate(text_of("m2i-status")).strip()  # no error, no note
        browser.screenshot(tmp_path / "demo-drawn.png")

        browser.type_into("#m2i-markup textarea", BROKEN)
        browser.click("#m2i-draw")
        status = browser.wait_for(
            f"(() => {{ const t = {text_of('m2i-status')};"
            " return t.includes('could not render') && t; })()",
            DRAW_TIMEOUT,
        )
        assert "LaTeX could not render this markup" in status
        error = status.split("could not render this markup:", 1)[1].strip()
        assert error and "Traceback" not in status, status
        # the scores say why there are none, and the model still drew the broken markup
        browser.wait_for(f"{text_of('m2i-scores')}.includes('No scores')", DRAW_TIMEOUT)
        browser.wait_for(
            f"(() => {{ const s = {image_shown('m2i-model')}; return s && s !== {json.dumps(model_src)}; }})()",
            DRAW_TIMEOUT,
        )
        assert not browser.evaluate(image_shown("m2i-rendered"))
        browser.screenshot(tmp_path / "demo-error.png")
        # the page asked nothing of any other host (no fonts, analytics or version checks)
        urls = browser.requested_urls()
        assert urls and all(u.startswith((url, "data:", "blob:")) for u in urls), [
            u for u in urls if not u.startswith((url, "data:", "blob:"))
        ]
    finally:
        if browser is not None:
            browser.close()
        stop(proc)
    text = log.read_text(errors="replace")
    assert "Traceback" not in text, text[-3000:]


def post_file(url: str, content: bytes) -> tuple[int, bytes]:
    """POST ``content`` as a multipart file upload; the status and body of the answer."""
    boundary = "m2i-test-boundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="x.txt"\r\n'
            "Content-Type: text/plain\r\n\r\n"
        ).encode()
        + content
        + f"\r\n--{boundary}--\r\n".encode()
    )
    request = urllib.request.Request(
        url, data=body, method="POST",
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )  # fmt: skip
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=30) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.mark.slow
def test_the_demo_takes_no_uploads_and_sigterm_removes_its_work_dir(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """The page has no upload component: every upload route of Gradio refuses a stranger's
    file, which is stored nowhere (they used to store it and serve it back by
    /gradio_api/file=). SIGTERM stops the demo with its work directory removed, as Ctrl-C
    does (it used to be left in the temporary directory)."""
    pytest.importorskip("gradio", reason="needs the demo extra (requirements-demo-lock.txt)")
    temp, cache = tmp_path / "tmp", tmp_path / "gradio"
    temp.mkdir()
    proc, url, log = start_demo(
        tiny_model_dir, tmp_path, TMPDIR=str(temp), GRADIO_TEMP_DIR=str(cache)
    )
    try:
        (workdir,) = temp.glob("markup2im-demo-*")
        marker = f"a stranger's file {time.time_ns()}".encode()
        for route in ("upload", "upload/", "upload?upload_id=x", "process_recording"):
            status, body = post_file(f"{url}gradio_api/{route}", marker)
            assert status == 404, (route, status, body[:300])
        stored = [p for p in tmp_path.rglob("*") if p.is_file() and marker in p.read_bytes()]
        assert not stored
        assert answers(url)  # the page itself is still served
        proc.send_signal(signal.SIGTERM)  # to the demo alone, as `kill PID` does
        proc.wait(timeout=60)
    finally:
        stop(proc)
    assert not workdir.exists(), log.read_text(errors="replace")[-3000:]
    assert "Traceback" not in log.read_text(errors="replace")


def test_upload_routes_are_recognised_under_any_prefix_but_files_are_not() -> None:
    from markup2im.demo import is_upload_route

    for path in ("/gradio_api/upload", "/gradio_api/upload/", "/x/gradio_api/upload",
                 "/upload", "/gradio_api/process_recording"):  # fmt: skip
        assert is_upload_route(path), path
    for path in ("/", "/gradio_api/queue/join", "/gradio_api/file=/tmp/upload",
                 "/gradio_api/upload_progress"):  # fmt: skip
        assert not is_upload_route(path), path


def test_the_renderers_error_is_shown_as_text() -> None:
    from markup2im.demo import Comparison, scores_html, status_html

    result = Comparison("<b>", render_error="! Undefined control sequence <b> & more")
    shown = status_html(result, "LaTeX")
    assert "LaTeX could not render this markup" in shown
    assert "&lt;b&gt; &amp; more" in shown and "<b> &" not in shown
    assert "No scores" in scores_html(result)
    assert "DTW <b" in scores_html(Comparison("x", dtw=3.0, ssim=0.5))


def test_compare_draws_what_the_pipeline_draws(tmp_path: Path, monkeypatch) -> None:
    """The page's drawing is the pipeline's (one markup with seed s: example 0 of s), with its
    denoising GIF; the renderer is left out here (the page test above runs it)."""
    from markup2im.pipeline import Markup2ImPipeline

    model_dir = save_untrained_model(tmp_path / "model")
    demo = Demo.load(model_dir, tmp_path, domain="tables", device="cpu")
    monkeypatch.setattr(demo, "_render", lambda markup: (None, "no renderer in this test"))
    seen: list[tuple[float, str]] = []
    result = demo.compare(
        "<table></table>", steps=3, seed=2, progress=lambda f, what: seen.append((f, what))
    )
    assert result.render_error == "no renderer in this test" and result.dtw is None
    assert result.animation is not None and result.animation.is_file()
    assert seen[-1] == (1.0, "denoising")
    drawn = Markup2ImPipeline(demo.model)("<table></table>", steps=3, seed=2).images[0]
    assert (pixels(result.image) == pixels(drawn)).all()


def test_compare_guides_as_the_pipeline_does(tmp_path: Path, monkeypatch) -> None:
    """The page's guidance scale reaches the pipeline: the drawing is the pipeline's with that
    scale, which is not the unguided one."""
    from markup2im.pipeline import Markup2ImPipeline

    model_dir = save_untrained_model(tmp_path / "model")
    demo = Demo.load(model_dir, tmp_path, domain="tables", device="cpu")
    monkeypatch.setattr(demo, "_render", lambda markup: (None, "no renderer in this test"))
    result = demo.compare("<table></table>", steps=3, seed=2, guidance_scale=3.0)
    pipe = Markup2ImPipeline(demo.model)
    guided = pipe("<table></table>", steps=3, seed=2, guidance_scale=3.0).images[0]
    plain = pipe("<table></table>", steps=3, seed=2).images[0]
    assert (pixels(result.image) == pixels(guided)).all()
    assert (pixels(result.image) != pixels(plain)).any()
    bad = demo.compare("<table></table>", steps=3, seed=2, guidance_scale=-1.0)
    assert bad.image is None and any("guidance_scale must be" in n for n in bad.notes)
