"""``gdzoo hub``: export, seed, verify, ship (manifest), serve and push Hub folders of pretrained weights."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..hub import HubFolder

# gdzoo.hub (torch, timm, huggingface_hub) is imported when a command runs, so ``gdzoo hub --help`` stays fast


def add_parser(sub: argparse._SubParsersAction) -> None:
    hub = sub.add_parser("hub", help="pretrained weights: export, seed the HF cache, verify, serve, push")
    cmds = hub.add_subparsers(dest="hub_command", metavar="HUB_COMMAND", required=True)
    org_now = os.environ.get("GDZOO_HF_ORG") or "gdzoo"  # gdzoo.models.pretrained.default_org, without torch
    org_help = f"Hub organisation (default: $GDZOO_HF_ORG or 'gdzoo'; now {org_now!r})"

    p = cmds.add_parser("export", help="write weights/<model>.<tag>/ from a checkpoint")
    p.add_argument("model", help="registered model name, e.g. gd_fmnist")
    p.add_argument("checkpoint", help=".safetensors file, or a .pth/.pt checkpoint (read with weights_only=True)")
    p.add_argument("--tag", required=True)
    p.add_argument("--root", default="weights")
    p.add_argument("--org", default=None, help=org_help)
    p.add_argument("--num-classes", type=int, default=None)
    p.set_defaults(run=_export)

    p = cmds.add_parser("seed", help="copy Hub folders into the Hugging Face cache for offline use")
    p.add_argument("folders", nargs="*", help="Hub folders (default: every folder under weights/)")
    p.add_argument("--org", default=None, help=org_help)
    p.add_argument("--cache-dir", default=None, help="cache to write (default: huggingface_hub's HF_HUB_CACHE)")
    p.set_defaults(run=_seed)

    p = cmds.add_parser("verify", help="check Hub folders (config, weights, architecture) and the seeded cache")
    p.add_argument("folders", nargs="*", help="Hub folders (default: every folder under weights/)")
    p.add_argument("--org", default=None, help=org_help)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--no-cache", action="store_true", help="check the folders only, not the cache")
    p.set_defaults(run=_verify)

    p = cmds.add_parser("manifest", help="write (or --check) the manifest of the weights that ship with gdzoo")
    p.add_argument("folders", nargs="*", help="Hub folders to ship (default: every folder under weights/)")
    p.add_argument("--check", action="store_true", help="only compare; exit 1 when the manifest differs")
    p.set_defaults(run=_manifest)

    p = cmds.add_parser("serve", help="serve Hub folders over HTTP (point HF_ENDPOINT at it)")
    p.add_argument("folders", nargs="*", help="Hub folders (default: every folder under weights/)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--org", default=None, help=org_help)
    p.set_defaults(run=_serve)

    p = cmds.add_parser("push", help="create the Hub repo and upload a folder (token from HF_TOKEN / login)")
    p.add_argument("folder")
    p.add_argument("--org", default=None, help=org_help)
    p.add_argument("--private", action="store_true")
    p.add_argument("--dry-run", action="store_true", help="print what would be uploaded, contact nothing")
    p.set_defaults(run=_push)


def _folders(paths: list[str]) -> list[HubFolder]:
    from ..hub import HubFolder, find_hub_folders

    folders = [HubFolder.open(p) for p in paths] if paths else find_hub_folders("weights")
    if not folders:
        raise SystemExit("no Hub folder given and none found under weights/")
    return folders


def _export(args: argparse.Namespace) -> int:
    import timm

    from ..hub import export_hub_folder
    from ..models.pretrained import load_weights_file

    kwargs = {"num_classes": args.num_classes} if args.num_classes else {}
    model = timm.create_model(args.model, **kwargs)
    state = load_weights_file(args.checkpoint)
    state = state.get("model", state) if isinstance(state.get("model"), dict) else state
    model.load_state_dict(state)
    folder = export_hub_folder(model, args.tag, args.root, org=args.org)
    print(f"wrote {folder.path} ({folder.repo_id(args.org)})")
    return 0


def _seed(args: argparse.Namespace) -> int:
    from ..hub import seed_cache

    for folder in _folders(args.folders):
        snapshot = seed_cache(folder, org=args.org, cache_dir=args.cache_dir)
        print(f"seeded {folder.repo_id(args.org)} -> {snapshot}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from ..hub import verify_cached_repo, verify_folder

    problems: list[str] = []
    folders = _folders(args.folders)
    for folder in folders:
        found = verify_folder(folder, org=args.org)
        if not args.no_cache:
            found += verify_cached_repo(folder.repo_id(args.org), args.cache_dir)
        problems += found
        print(f"{'ok  ' if not found else 'FAIL'} {folder.path}")
    for problem in problems:
        print(f"  - {problem}", file=sys.stderr)
    return 1 if problems else 0


def _manifest(args: argparse.Namespace) -> int:
    from ..hub.manifest import MANIFEST_FILE, manifest_differences, write_manifest

    folders = _folders(args.folders)
    if args.check:
        problems = manifest_differences(folders)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
        print(f"{'FAIL' if problems else 'ok  '} {MANIFEST_FILE}")
        return 1 if problems else 0
    path = write_manifest(folders)
    print(f"wrote {path}: {', '.join(f.path.name for f in folders)}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from ..hub import serve_hub

    folders = _folders(args.folders)
    with serve_hub(folders, args.host, args.port, org=args.org) as url:
        print(f"serving {len(folders)} repo(s) at {url}; use HF_ENDPOINT={url}  (Ctrl-C to stop)", flush=True)
        try:
            import threading

            threading.Event().wait()
        except KeyboardInterrupt:
            pass
    return 0


def _push(args: argparse.Namespace) -> int:
    from ..hub import HubFolder, push_folder

    folder = HubFolder.open(Path(args.folder))
    names = push_folder(folder, org=args.org, dry_run=args.dry_run, private=args.private)
    verb = "would upload" if args.dry_run else "uploaded"
    print(f"{verb} to {folder.repo_id(args.org)}: " + ", ".join(names))
    return 0
