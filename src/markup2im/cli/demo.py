"""``markup2im demo``: a local web page that draws typed markup beside the real renderer."""

from __future__ import annotations

import argparse
from pathlib import Path

from markup2im.names import DOMAINS


def port_number(text: str) -> int:
    """A TCP port, 1..65535."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port lies in 1..65535, got {text}")
    return value


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``demo`` and its flags."""
    p = subparsers.add_parser(
        "demo",
        help="a web page: type markup, see the model's image beside the real renderer's",
        description="Serves a Gradio page (needs the `demo` extra: pip install -r "
        "requirements-demo-lock.txt) with the model's image, the real renderer's image of "
        "the same markup, their DTW and SSIM and the denoising animation. One request at a "
        "time; Ctrl-C stops it.",
    )
    p.add_argument("--model-dir", type=Path, required=True, help="a saved model (O/model of train)")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0: every "
        "network the machine is on)",
    )
    p.add_argument("--port", type=port_number, default=7860, help="port (default: 7860)")
    p.add_argument(
        "--domain",
        choices=sorted(DOMAINS),
        default=None,
        help="the model's markup domain when its directory does not record one (default: math)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Serve until interrupted."""
    from markup2im.demo import serve

    serve(args.model_dir, host=args.host, port=args.port, domain=args.domain, device=args.device)
    return 0
