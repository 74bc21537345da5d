"""The web demo (``markup2im demo``): type markup, see the model's image beside the real renderer's.

A Gradio page with a text box (and a few example markups of the model's domain from its seeded
generator), sampler, steps, seed, epsilon scaling (:mod:`markup2im.eps_scaling`) and a Draw
button. For each request it shows side by side the model's image
(:class:`markup2im.pipeline.Markup2ImPipeline`), the domain's real renderer's image of the same
markup at the model's size (sandboxed like every rendering), their DTW and SSIM, and the
denoising animation. Markup the renderer rejects shows the renderer's error in
the page; the model still draws it.

The page binds to 127.0.0.1 unless told otherwise, makes no network requests of its own
(Gradio's analytics are off, nothing is shared, the theme uses the system's fonts) and draws one
request at a time (a CPU is busy with one), showing its progress. It has no upload component,
so Gradio's routes that store a visitor's file are closed (:class:`RefuseUploads`), and its
working directory is removed when it stops, on SIGTERM as on Ctrl-C. The comparison itself
(:class:`Demo`) does not need Gradio, which is imported only to build the page.
"""

from __future__ import annotations

import html
import importlib
import itertools
import json
import logging
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from markup2im.eps_scaling import EpsScaleLike
from markup2im.errors import ConfigError, Markup2ImError, MissingDependencyError
from markup2im.figures.gif import frames_gif
from markup2im.figures.images import enlarge, upscale_factor
from markup2im.guidance import NO_GUIDANCE
from markup2im.model import MODEL_RECORD, Markup2ImModel
from markup2im.names import DEFAULT_STEPS, SAMPLERS, frames_every
from markup2im.pipeline import Markup2ImPipeline

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
DEFAULT_DOMAIN = "math"
EXAMPLES = 4  # example markups shown under the text box
EXAMPLE_CANDIDATES = 200  # generated markups per difficulty level searched for ones that fit
KEPT_GIFS = 8  # denoising GIFs kept in the demo's directory (Gradio serves its own copies)
INSTALL_HINT = (
    "markup2im demo needs Gradio, which is not installed; install the pinned versions with "
    "`pip install -r requirements-demo-lock.txt` (scripts/setup.sh --test does) or the extra "
    "with `pip install 'markup2im[demo]'`"
)
RENDERER_NAMES = {
    "latex": "LaTeX",
    "html": "wkhtmltoimage",
    "lilypond": "LilyPond",
    "smiles": "RDKit",
}

Progress = Callable[[float, str], None]
"""Called with (fraction done, what is being done)."""


# ----------------------------------------------------------------------------- the comparison


@dataclass
class Comparison:
    """What the page shows for one markup."""

    markup: str
    image: Image.Image | None = None  # the model's, at its size
    rendered: Image.Image | None = None  # the real renderer's, at the model's size
    animation: Path | None = None  # GIF of the denoising
    dtw: float | None = None
    ssim: float | None = None
    render_error: str = ""
    notes: list[str] = field(default_factory=list)


def model_domain(model_dir: str | os.PathLike[str], override: str | None = None) -> str:
    """The markup domain of a model directory.

    A domain recorded with the model (``markup2im_model.json``, or ``original_checkpoint.json``
    of an imported checkpoint) wins; otherwise ``override``, otherwise math. An ``override``
    that contradicts the record is a ConfigError.
    """
    from markup2im.original import PROVENANCE_FILE
    from markup2im.presets import get_domain

    recorded, source = None, None
    for name in (MODEL_RECORD, PROVENANCE_FILE):
        path = Path(model_dir) / name
        try:
            value = json.loads(path.read_text(encoding="utf-8")).get("domain")
        except (OSError, ValueError, AttributeError):
            continue
        if value:
            recorded, source = str(value), path
            break
    if recorded and override and override != recorded:
        raise ConfigError(
            f"--domain {override} contradicts {source}, which records domain {recorded!r}"
        )
    return get_domain(recorded or override or DEFAULT_DOMAIN).name


class Demo:
    """A loaded model, its domain, and the comparison of its images with the renderer's."""

    def __init__(
        self,
        pipe: Markup2ImPipeline,
        domain: str,
        workdir: str | os.PathLike[str],
        render_timeout: float = 30,
    ) -> None:
        from markup2im.presets import get_domain

        self.pipe = pipe
        self.model: Markup2ImModel = pipe.model
        self.spec = get_domain(domain)
        self.workdir = Path(workdir)
        self.render_timeout = render_timeout
        self._count = itertools.count(1)
        self._lock = threading.Lock()  # one drawing at a time, whatever calls it

    @classmethod
    def load(
        cls,
        model_dir: str | os.PathLike[str],
        workdir: str | os.PathLike[str],
        *,
        domain: str | None = None,
        device: str = "auto",
    ) -> Demo:
        """Load the model of ``model_dir`` (ModelError when missing or damaged)."""
        pipe = Markup2ImPipeline.from_pretrained(model_dir, device=device)
        return cls(pipe, model_domain(model_dir, domain), workdir)

    @property
    def renderer(self) -> str:
        """The real renderer's name, for the page."""
        return RENDERER_NAMES.get(self.spec.renderer, self.spec.renderer)

    def examples(self, n: int = EXAMPLES, look_at: int = EXAMPLE_CANDIDATES) -> list[str]:
        """``n`` markups of the domain's seeded generator (seed 0) that fit the model's markup
        limit: from its first ``look_at`` items, of each difficulty level in turn (math: standard,
        then simple); the first ones when too few fit. None when the generator cannot run."""
        from markup2im.data import synth

        try:
            module = importlib.import_module(f"{synth.__name__}.{synth.GENERATORS[self.spec.name]}")
            levels = getattr(module, "DIFFICULTIES", (synth.DEFAULT_DIFFICULTY,))
            streams = [synth.iter_unique(self.spec.name, 0, level) for level in levels]
            candidates = [m for s in streams for m in itertools.islice(s, look_at)]
        except (Markup2ImError, ImportError) as exc:
            logger.warning("no example markups for %s: %s", self.spec.name, exc)
            return []
        overflow = self.model.encoder.overflow(candidates) if candidates else []
        fitting = [m for m, cut in zip(candidates, overflow, strict=True) if not cut]
        return (fitting or candidates)[:n]

    def describe(self) -> str:
        """One line about the model: domain, size and colour of its images, encoder limit."""
        m = self.model
        mode = "grayscale" if m.channels == 1 else "RGB"
        return (
            f"{self.spec.name} model, {m.width}x{m.height} {mode} images, "
            f"markup up to {m.encoder.max_length} tokens"
        )

    def compare(
        self,
        markup: str,
        *,
        sampler: str = "ddim",
        steps: int | None = None,
        seed: int = 0,
        progress: Progress | None = None,
        eps_scale: EpsScaleLike = None,
        guidance_scale: float | None = None,
    ) -> Comparison:
        """Render and draw ``markup`` (``eps_scale``: the sampler's epsilon scaling,
        ``guidance_scale`` its classifier-free guidance; None or 1: none); errors of the renderer
        or of the settings become ``render_error`` or ``notes``, never exceptions."""
        markup = (markup or "").strip()
        result = Comparison(markup)
        if not markup:
            result.notes.append("Type some markup first (or pick an example).")
            return result
        report = progress or (lambda fraction, what: None)
        with self._lock:
            report(0.0, f"rendering with {self.renderer}")
            result.rendered, result.render_error = self._render(markup)
            cut = self.model.encoder.overflow([markup])[0]
            if cut:
                limit = self.model.encoder.max_length
                result.notes.append(
                    f"The markup is {limit + cut} tokens long, over the model's limit of {limit}: "
                    f"truncated by {cut} token{'s' if cut != 1 else ''}."
                )
            try:
                self._draw(result, sampler, steps, seed, report, eps_scale=eps_scale,
                           guidance_scale=guidance_scale)  # fmt: skip
            except Markup2ImError as exc:
                result.notes.append(f"Cannot draw: {exc}")
                return result
        if result.rendered is not None and result.image is not None:
            from markup2im.metrics import dtw, ssim

            result.dtw = dtw(result.image, result.rendered)
            try:
                result.ssim = ssim(result.image, result.rendered)
            except ValueError as exc:  # an image smaller than the SSIM window
                result.notes.append(f"No SSIM: {exc}")
        return result

    def _render(self, markup: str) -> tuple[Image.Image | None, str]:
        """(the renderer's image, "") or (None, the renderer's error)."""
        from markup2im.data.render import render_markups
        from markup2im.images import load_image

        m = self.model
        try:
            item = render_markups(
                self.spec,
                [markup],
                width=m.width,
                height=m.height,
                workers=1,
                timeout=self.render_timeout,
                progress=False,
            )[0]
        except Markup2ImError as exc:  # no renderer, no sandbox
            return None, str(exc)
        if not item.ok or item.png is None:
            return None, item.error or "the renderer made no image"
        return load_image(item.png, channels=m.channels, size=(m.width, m.height)), ""

    def _draw(
        self,
        result: Comparison,
        sampler: str,
        steps: int | None,
        seed: int,
        report: Progress,
        eps_scale: EpsScaleLike,
        guidance_scale: float | None,
    ) -> None:
        drawing = self.pipe(
            result.markup,
            sampler=sampler,
            steps=steps,
            seed=seed,
            frames_every=frames_every(self.pipe.num_steps(sampler, steps)),
            progress=DenoisingProgress(report),
            eps_scale=eps_scale,
            guidance_scale=guidance_scale,
        )
        result.image = drawing.images[0]
        number = next(self._count)
        gif = self.workdir / f"denoising-{number:06d}.gif"
        frames_gif(drawing.frames[0], gif)
        result.animation = gif
        old = self.workdir / f"denoising-{number - KEPT_GIFS:06d}.gif"
        old.unlink(missing_ok=True)


@dataclass(frozen=True)
class DenoisingProgress:
    """A pipeline's (steps done, steps in all) as the page's (fraction, "denoising")."""

    report: Progress

    def __call__(self, done: int, total: int) -> None:
        self.report(done / total, "denoising")


# ----------------------------------------------------------------------------- the page


def import_gradio() -> Any:
    """Gradio, with its analytics off; MissingDependencyError saying how to install it."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    try:
        import gradio
    except ImportError as exc:
        raise MissingDependencyError(INSTALL_HINT) from exc
    return gradio


def _display(image: Image.Image | None) -> Image.Image | None:
    """Small images enlarged (nearest neighbour) so that the page shows them crisply."""
    return None if image is None else enlarge(image, upscale_factor(image.size))


def scores_html(result: Comparison) -> str:
    """DTW and SSIM of the model's image against the renderer's, or why there are none."""
    if result.dtw is None:
        return '<p class="m2i-scores">No scores: they need both images.</p>'
    ssim = "n/a" if result.ssim is None else f"{result.ssim:.3f}"
    return (
        '<p class="m2i-scores">'
        f'DTW <b id="m2i-dtw">{result.dtw:.1f}</b> (lower is better) &middot; '
        f'SSIM <b id="m2i-ssim">{ssim}</b> (higher is better), model against renderer</p>'
    )


def status_html(result: Comparison, renderer: str) -> str:
    """The renderer's error and any notes, escaped."""
    parts = []
    if result.render_error:
        parts.append(
            f'<div class="m2i-error"><b>{html.escape(renderer)} could not render this markup:</b>'
            f"<pre>{html.escape(result.render_error)}</pre></div>"
        )
    parts += [f'<p class="m2i-note">{html.escape(note)}</p>' for note in result.notes]
    return "\n".join(parts)


def build_app(demo: Demo) -> Any:
    """The Gradio Blocks of the page (queued: one request at a time)."""
    gr = import_gradio()
    train_steps = int(demo.model.scheduler_config.get("num_train_timesteps", 1000))

    def on_draw(
        markup: str,
        sampler: str,
        steps: float,
        seed: float,
        eps_scale: float | None,
        guidance_scale: float | None,
        progress=gr.Progress(),  # noqa: B008 (Gradio finds its progress bar by this default)
    ):
        def report(fraction: float, what: str) -> None:
            progress(fraction, desc=what)

        result = demo.compare(
            markup,
            sampler=sampler,
            steps=int(steps),
            seed=int(seed or 0),
            progress=report,
            eps_scale=None if eps_scale is None else float(eps_scale),
            guidance_scale=None if guidance_scale is None else float(guidance_scale),
        )
        return (
            _display(result.image),
            _display(result.rendered),
            None if result.animation is None else str(result.animation),
            scores_html(result),
            status_html(result, demo.renderer),
        )

    def on_sampler(sampler: str) -> int:
        return DEFAULT_STEPS.get(sampler) or train_steps

    # the page's temporary files (images, GIFs) go after an hour
    with gr.Blocks(
        title="markup2im demo", analytics_enabled=False, delete_cache=(600, 3600)
    ) as app:
        gr.Markdown(f"# markup2im\n{demo.describe()}; the real renderer is {demo.renderer}.")
        markup = gr.Textbox(label="Markup", lines=3, elem_id="m2i-markup")
        examples = demo.examples()
        if examples:
            gr.Examples([[m] for m in examples], inputs=[markup], label="Examples")
        sampler, steps, seed, eps_scale, guidance_scale = _sampler_controls(gr, train_steps)
        button = gr.Button("Draw", variant="primary", elem_id="m2i-draw")
        status = gr.HTML(elem_id="m2i-status")
        with gr.Row():
            # PNG, not Gradio's default WebP: the pixels as drawn; no share button (a web service)
            shown = {"interactive": False, "height": 200, "buttons": ["download", "fullscreen"]}
            image = gr.Image(label="Model", type="pil", format="png", elem_id="m2i-model", **shown)
            rendered = gr.Image(
                label=f"Renderer ({demo.renderer})",
                type="pil",
                format="png",
                elem_id="m2i-rendered",
                **shown,
            )
            animation = gr.Image(
                label="Denoising", type="filepath", elem_id="m2i-animation", **shown
            )
        scores = gr.HTML(elem_id="m2i-scores")
        button.click(
            on_draw,
            [markup, sampler, steps, seed, eps_scale, guidance_scale],
            [image, rendered, animation, scores, status],
            concurrency_limit=1,
        )
        sampler.change(on_sampler, [sampler], [steps], queue=False)
    app.queue(default_concurrency_limit=1)
    return app


# Gradio's routes that store a file sent by a visitor (then served back by /gradio_api/file=)
UPLOAD_ROUTES = frozenset({"upload", "process_recording"})


def _sampler_controls(gr: Any, train_steps: int) -> tuple[Any, ...]:
    """The row of sampler settings: sampler, steps, seed, eps scale and guidance scale."""
    with gr.Row():
        sampler = gr.Dropdown(list(SAMPLERS), value="ddim", label="Sampler")
        steps = gr.Slider(
            1, train_steps, value=DEFAULT_STEPS["ddim"], step=1, label="Denoising steps"
        )
        seed = gr.Number(0, label="Seed", precision=0, minimum=0)
        # no minimum: a value <= 0 gets the library's message in the page
        eps_scale = gr.Number(
            1.0,
            label="Eps scale",
            step=0.001,
            info="divides the predicted noise (1: the plain sampler; the paper's 1.004-1.017)",
            elem_id="m2i-eps-scale",
        )
        guidance_scale = gr.Number(
            NO_GUIDANCE,
            label="Guidance scale",
            step=0.5,
            info="classifier-free guidance for models trained with markup dropout (1: none)",
            elem_id="m2i-guidance-scale",
        )
    return sampler, steps, seed, eps_scale, guidance_scale


class RefuseUploads:
    """ASGI middleware answering 404 to Gradio's upload routes: the page has no upload
    component, so any upload is a stranger storing files on this machine."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and is_upload_route(scope.get("path", "")):
            await send({"type": "http.response.start", "status": 404,
                        "headers": [(b"content-type", b"text/plain; charset=utf-8")]})  # fmt: skip
            await send({"type": "http.response.body", "body": b"this demo takes no uploads"})
            return
        await self.app(scope, receive, send)


def is_upload_route(path: str) -> bool:
    """Whether ``path`` is one of Gradio's upload routes (under any prefix, with or without
    a trailing slash); never a ``file=`` path, whatever the name of the file."""
    if "/file=" in path:
        return False
    return path.rstrip("/").rsplit("/", 1)[-1] in UPLOAD_ROUTES


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Let SIGTERM stop the demo as Ctrl-C does (Gradio closes its server, the work directory
    is removed) instead of ending the process with its files left behind."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def serve(
    model_dir: str | os.PathLike[str],
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    domain: str | None = None,
    device: str = "auto",
) -> None:
    """Load the model and serve the page until interrupted (Ctrl-C or SIGTERM); the work
    directory goes either way."""
    gr = import_gradio()  # first, so that a missing Gradio is said before the model loads
    workdir = Path(tempfile.mkdtemp(prefix="markup2im-demo-"))
    with sigterm_as_interrupt():
        try:
            demo = Demo.load(model_dir, workdir, domain=domain, device=device)
            logger.info("starting the demo of %s on http://%s:%d", model_dir, host, port)
            launch(gr, build_app(demo), host, port, workdir)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


def launch(gr: Any, app: Any, host: str, port: int, workdir: Path) -> None:
    """Serve the page ``app`` until interrupted: local fonts, no sharing, no uploads."""
    from starlette.middleware import Middleware  # installed with Gradio

    # system fonts: the default theme would fetch its fonts from the web
    theme = gr.themes.Default(
        font=["ui-sans-serif", "system-ui", "sans-serif"],
        font_mono=["ui-monospace", "monospace"],
    )
    try:
        app.launch(
            server_name=host,
            server_port=port,
            share=False,
            inbrowser=False,
            show_error=False,
            allowed_paths=[str(workdir)],
            # no upload routes; and should one be reached, it takes no file of any size
            app_kwargs={"middleware": [Middleware(RefuseUploads)]},
            max_file_size=0,
            theme=theme,
            css=CSS,
        )
    except OSError as exc:
        raise ConfigError(f"cannot serve the demo on {host}:{port}: {exc}") from exc


CSS = """
#m2i-model img, #m2i-rendered img, #m2i-animation img { image-rendering: pixelated; }
.m2i-error pre { white-space: pre-wrap; }
"""
