"""The `perception-rl view` command: write the page, print its path, optionally serve it on 127.0.0.1."""

from __future__ import annotations

import argparse
import functools
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from perception_rl.viewer.page import write_page


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="perception-rl view",
        description="Write RUN_DIR/view.html: the run's reward curves, rollouts (per step, per group, with the "
                    "judge's per-item verdicts) and test results, in one self-contained HTML file.",
    )
    parser.add_argument("run_dir", type=Path, help="a run's trainer.default_root_dir, or a `perception-rl test` folder")
    parser.add_argument("--out", type=Path, default=None, help="where to write the page (default RUN_DIR/view.html)")
    parser.add_argument("--serve", action="store_true", help="serve the page's folder on 127.0.0.1 until Ctrl-C")
    parser.add_argument("--port", type=int, default=8000, help="port for --serve (0: any free port)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    page = write_page(args.run_dir, args.out)
    print(page, flush=True)
    if args.serve:
        serve(page, args.port)


def serve(page: Path, port: int) -> None:
    """Serve the page's folder on 127.0.0.1 (never another interface) until interrupted."""
    handler = functools.partial(_QuietHandler, directory=str(page.parent))
    with ThreadingHTTPServer(("127.0.0.1", port), handler) as server:
        print(f"serving http://127.0.0.1:{server.server_address[1]}/{page.name} (Ctrl-C to stop)", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args) -> None:
        pass
