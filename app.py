"""Style studio: six methods for steering text-to-image diffusion models, in one Gradio app.

    python app.py                 # SDXL base from the Hugging Face Hub (a GPU is advised)
    python app.py --model tiny    # offline: tiny random models, runs on a CPU in seconds
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
from pathlib import Path

log = logging.getLogger("studio")


def parse_args(argv=None) -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=env("STUDIO_MODEL", "sdxl"),
                   help="sdxl (default), sd15, tiny, tiny-sd, sdxl-arch, a Hub id or a local diffusers folder")
    p.add_argument("--device", default=env("STUDIO_DEVICE", "auto"), help="auto, cuda, cuda:1, mps or cpu")
    p.add_argument("--dtype", default=env("STUDIO_DTYPE", "auto"), help="auto, fp16, bf16 or fp32")
    p.add_argument("--host", default=env("STUDIO_HOST", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(env("STUDIO_PORT", env("GRADIO_SERVER_PORT", "7860"))))
    default_data = env("STUDIO_DATA_DIR") or ("/data/studio" if Path("/data").is_dir() and env("SPACE_ID") else "data")
    p.add_argument("--data-dir", default=default_data,
                   help="where adapters, ratings and outputs are kept (env STUDIO_DATA_DIR; "
                        "/data/studio on a Space with persistent storage)")
    p.add_argument("--share", action="store_true", help="also serve through a public gradio.live link")
    p.add_argument("--adain-weights", default=env("STUDIO_ADAIN_WEIGHTS"),
                   help="AdaIN weights: a folder with vgg_normalised.pth and decoder.pth, or a Hub repo id")
    p.add_argument("--allow-server-paths", action="store_true",
                   help="let the UI read folders on this machine by path (AdaIN training sets); off by "
                        "default, never on a shared instance")
    p.add_argument("--auth", default=env("STUDIO_AUTH"),
                   help="protect the instance with a login: 'user:password[,user2:password2]' (env STUDIO_AUTH)")
    p.add_argument("--multi-user", action="store_true", default=bool(env("SPACE_ID")) or bool(env("STUDIO_MULTI_USER")),
                   help="keep each visitor's uploads, adapters and ratings apart (on by default on a Space)")
    return p.parse_args(argv)


def parse_auth(value: str | None) -> list[tuple[str, str]] | None:
    if not value:
        return None
    pairs = []
    for item in value.split(","):
        user, sep, password = item.strip().partition(":")
        if not sep or not user or not password:
            raise SystemExit("--auth wants 'user:password[,user2:password2]'")
        pairs.append((user, password))
    return pairs


def visitor_secret(data_dir: Path) -> str:
    """A per-installation secret for the visitor id kept in the browser, stable across
    restarts (so a reload or a restart finds the visitor's work again)."""
    import secrets

    path = data_dir / ".visitor-secret"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        tmp.write_text(secrets.token_hex(16))
        os.replace(tmp, path)
    return path.read_text().strip()


def build_app(args: argparse.Namespace):
    import gradio as gr

    from core.engine import Engine
    from core.metrics import Metrics
    from tabs import TAB_MODULES
    from tabs.common import AppContext

    data_dir = Path(args.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    engine = Engine(args.model, device=args.device, dtype=args.dtype, data_dir=data_dir)
    engine.load_in_background()
    ctx = AppContext(engine=engine, data_dir=data_dir, args=args,
                     metrics=Metrics(tiny=engine.offline, device=engine.device))

    with gr.Blocks(title="Style studio") as demo:
        ctx.visitor = gr.BrowserState(None, storage_key="style-studio-visitor",
                                      secret=visitor_secret(data_dir))
        gr.Markdown(f"# Style studio\nModel: `{engine.spec.source}` on `{engine.device}`"
                    + (" (offline tiny models: images are noise, the machinery is real)"
                       if engine.offline else ""))
        for name in TAB_MODULES:
            module = importlib.import_module(name)
            with gr.Tab(module.TITLE):
                module.build(ctx)
        def assign_visitor(current):
            import uuid

            return current or uuid.uuid4().hex
        demo.load(assign_visitor, ctx.visitor, ctx.visitor, api_visibility="private")
    demo.queue(default_concurrency_limit=4)
    demo.studio = ctx  # for tests and embedding
    return demo


def main(argv=None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = parse_args(argv)
    from core.errors import UserError

    try:
        demo = build_app(args)
    except UserError as exc:
        raise SystemExit(f"error: {exc}") from None
    demo.launch(server_name=args.host, server_port=args.port, share=args.share,
                auth=parse_auth(args.auth), max_file_size="50mb",
                allowed_paths=result_folders(demo.studio.data_dir))


def result_folders(data_dir) -> list[str]:
    """The folders of the data dir whose files are handed to visitors (downloads): Gradio serves
    a result file only from the working or temp directory or from these, and on a Space the data
    dir (/data/studio) is neither. Never the library itself (SQLite, everyone's adapters)."""
    folders = [Path(data_dir) / "svg", Path(data_dir) / "library" / "exports", Path(data_dir) / "adain" / "runs"]
    for f in folders:
        f.mkdir(parents=True, exist_ok=True)
    return [str(f.resolve()) for f in folders]


if __name__ == "__main__":
    main()
