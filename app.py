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

# Idle OpenMP threads sleep instead of spinning: on a shared CPU (a Space, CI) spinning threads
# made CPU jobs several times slower and erratic. Set before torch loads its OpenMP runtime; an
# operator's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def parse_args(argv=None) -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=env("STUDIO_MODEL", "sdxl"),
                   help="sdxl (default), sd15, tiny, tiny-sd, sdxl-arch, a Hub id or a local diffusers folder")
    p.add_argument("--device", default=env("STUDIO_DEVICE", "auto"), help="auto, cuda, cuda:1, mps or cpu")
    p.add_argument("--dtype", default=env("STUDIO_DTYPE", "auto"), help="auto, fp16, bf16 or fp32")
    p.add_argument("--low-vram", action=argparse.BooleanOptionalAction, default=None,
                   help="the low-memory mode: idle text encoders on the CPU, VAE tiling/slicing and an "
                        "fp16-safe decode, gradient checkpointing and 8-bit Adam in training (env "
                        "STUDIO_LOW_VRAM=1/0; default: on by itself on a CUDA GPU under 16 GiB)")
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
    p.add_argument("--max-job-minutes", type=float, default=float(env("STUDIO_MAX_JOB_MINUTES", "0") or 0),
                   help="stop any job that holds the accelerator longer (default: 30 on a shared instance, "
                        "no limit on a private one)")
    p.add_argument("--proxy-hops", type=int, default=int(env("STUDIO_PROXY_HOPS", "1" if env("SPACE_ID") else "0")),
                   help="trusted proxies in front of the app (1 on a Space): the client address is read from "
                        "X-Forwarded-For that many entries from the right; 0 = the connection's own address")
    args = p.parse_args(argv)
    if args.low_vram is None:
        from core.devices import parse_low_vram

        try:
            args.low_vram = parse_low_vram(env("STUDIO_LOW_VRAM"))
        except ValueError as exc:
            p.error(f"STUDIO_LOW_VRAM: {exc}")
    if args.multi_user and args.allow_server_paths:
        p.error("--allow-server-paths cannot be used with --multi-user: every visitor could read the "
                "server's folders (other visitors' uploads and runs included)")
    if not 0 <= args.proxy_hops <= 8:
        p.error("--proxy-hops must be from 0 to 8")
    if not (0 <= args.max_job_minutes <= 7 * 24 * 60):
        p.error("--max-job-minutes must be from 0 (no limit) to 10080")
    return args


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


def make_auth(pairs: list[tuple[str, str]] | None):
    """The login check Gradio calls: the configured pairs, compared in constant time, behind a
    guard that locks a user name out for a minute after 5 wrong passwords (and every name
    after 50 in a minute), so that guessing gets nowhere."""
    if not pairs:
        return None
    import hmac

    from core.throttle import LoginGuard

    def check(user: str, password: str) -> bool:
        ok = False
        for u, pw in pairs:
            ok |= hmac.compare_digest(u.encode(), user.encode()) & hmac.compare_digest(pw.encode(), password.encode())
        return ok
    return LoginGuard(check)


def job_limits(args: argparse.Namespace):
    """A shared instance's fair share of the accelerator (core.jobs.JobLimits); a private
    instance has none but the optional time limit."""
    from core.jobs import JobLimits

    minutes = args.max_job_minutes or (30.0 if args.multi_user else 0.0)
    if not args.multi_user:
        return JobLimits(time_limit_s=minutes * 60) if minutes else None
    return JobLimits(per_owner=1, per_client=4, max_waiting=16, time_limit_s=minutes * 60)


def startup_line(args: argparse.Namespace, engine) -> str:
    risky = [flag for flag, on in (("--allow-server-paths", args.allow_server_paths), ("--share", args.share))
             if on]
    limits = engine.limits
    return (f"Style studio: model {engine.spec.source} on {engine.device} ({str(engine.dtype).replace('torch.', '')}); "
            f"{engine.memory_mode}; "
            f"data dir {Path(args.data_dir).resolve()}; multi-user {'on' if args.multi_user else 'off'}; "
            f"auth {'on' if args.auth else 'off'}; job time limit "
            f"{f'{limits.time_limit_s / 60:g} min' if limits and limits.time_limit_s else 'none'}; "
            f"proxy hops {args.proxy_hops}; risky flags: {', '.join(risky) or 'none'}")


def build_app(args: argparse.Namespace):
    import gradio as gr

    from core import identity
    from core.engine import Engine
    from core.metrics import Metrics
    from tabs import TAB_MODULES
    from tabs.common import AppContext, visitor_handlers
    from tabs.gradio_fixes import cached_images_written_once
    from tabs.health import HealthBanner
    from tabs.links import link_tabs

    cached_images_written_once()
    data_dir = Path(args.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    engine = Engine(args.model, device=args.device, dtype=args.dtype, data_dir=data_dir,
                    low_vram=getattr(args, "low_vram", None))
    engine.limits = job_limits(args)
    engine.load_in_background()
    ctx = AppContext(engine=engine, data_dir=data_dir, args=args,
                     metrics=Metrics(tiny=engine.offline, device=engine.device))

    # Gradio's cache (uploads, results handed out) swept every hour of files older than six
    with gr.Blocks(title="Style studio", delete_cache=(3600, 6 * 3600)) as demo:
        # the visitor token (core.identity) lives in the browser's storage; the BrowserState
        # secret is public by design: the token's own signature is what cannot be forged
        ctx.visitor = gr.BrowserState(None, storage_key="style-studio-visitor",
                                      secret=identity.browser_secret(data_dir))
        gr.Markdown("# Style studio")
        HealthBanner(ctx).build(demo)
        if args.multi_user and os.environ.get("OAUTH_CLIENT_ID"):  # a Space with `hf_oauth: true`
            gr.LoginButton()
        with gr.Tabs() as tabs:
            for name in TAB_MODULES:
                module = importlib.import_module(name)
                with gr.Tab(module.TITLE, id=name):
                    ctx.tabs[name] = module.build(ctx)
        link_tabs(ctx, tabs)

        assign_visitor, visitor = visitor_handlers(ctx)
        demo.load(assign_visitor, ctx.visitor, ctx.visitor, api_visibility="private")
        gr.api(visitor, api_name="visitor", concurrency_limit=None)
    demo.queue(default_concurrency_limit=4, max_size=64)
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
    log.info("%s", startup_line(args, demo.studio.engine))
    # no allowed_paths: nothing under the data dir is served; result files reach visitors as
    # copies in Gradio's cache (tabs.common.deliver), where an SVG goes out as a download
    demo.launch(server_name=args.host, server_port=args.port, share=args.share,
                auth=make_auth(parse_auth(args.auth)), max_file_size="50mb")


if __name__ == "__main__":
    main()
