"""``mrprior train`` (score-prior training) and ``mrprior prior`` (export / inspect prior cards)."""

from __future__ import annotations

import argparse
import shlex


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a score prior (denoising score matching); torchrun for several processes",
        description=(
            "Train a noise-conditioned U-Net denoiser on a prepared dataset. Checkpoints go to "
            "out_dir/last.pt (atomically, every ckpt_every_steps steps / ckpt_every_minutes "
            "minutes and on SIGTERM). Multi-process: torchrun --nproc_per_node N -m mrprior "
            "train CONFIG."
        ),
    )
    p.add_argument("config", metavar="CONFIG.yaml", help="TrainConfig YAML")
    p.add_argument("--resume", action="store_true", help="continue from out_dir/last.pt")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (dotted or bare name), repeatable",
    )
    p.add_argument(
        "--init-from",
        metavar="PRIOR",
        help="warm start from a prior card (shipped name or card path); same as init_from",
    )
    p.add_argument("--export", metavar="DIR", help="after training, export the prior card to DIR")
    p.set_defaults(func=run_train)

    q = subparsers.add_parser("prior", help="export or inspect prior cards")
    qs = q.add_subparsers(dest="prior_command", metavar="ACTION")
    e = qs.add_parser("export", help="checkpoint → safetensors EMA weights + YAML card")
    e.add_argument("checkpoint", help="a last.pt checkpoint or its run directory")
    e.add_argument("-o", "--output", required=True, metavar="DIR", help="output directory")
    e.add_argument("--name", help="prior name (default: the config's name)")
    e.add_argument("--raw", action="store_true", help="export the raw weights instead of the EMA")
    e.add_argument(
        "--no-validate",
        action="store_true",
        help="record the checkpoint's last validation loss instead of computing it afresh",
    )
    e.set_defaults(func=run_export)
    i = qs.add_parser("info", help="load a prior (name or card) and print its card")
    i.add_argument("prior", help="shipped name ('complex', 'magnitude') or card path")
    i.set_defaults(func=run_info)
    q.set_defaults(func=lambda a: (q.print_help(), 2)[1])


def _parse_sets(items: list[str]) -> dict[str, str]:
    from mrprior.errors import ConfigError

    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def run_train(args: argparse.Namespace) -> int:
    from mrprior.config import apply_overrides, load_yaml
    from mrprior.priors.training import TrainConfig, dist_info, train

    cfg = load_yaml(TrainConfig, args.config)
    if args.set:
        cfg = apply_overrides(cfg, _parse_sets(args.set))
    if args.init_from:
        cfg.init_from = args.init_from
    parts = ["mrprior", "train", args.config, *(["--resume"] if args.resume else [])]
    parts += ["--init-from", args.init_from] if args.init_from else []
    parts += [f"--set={item}" for item in args.set]
    parts += ["--export", args.export] if args.export else []
    rank, world, _ = dist_info()
    prefix = f"torchrun --nproc_per_node {world} -m " if world > 1 else ""
    command = prefix + " ".join(shlex.quote(a) for a in parts)
    summary = train(cfg, resume=args.resume, command=command)
    if rank != 0:
        return 0  # the other ranks of a torchrun job neither validate nor write: rank 0 reports
    print(
        f"step {summary['step']} ({summary['total_steps']} in total), "
        f"images seen {summary['images_seen']} ({summary['total_images_seen']} in total), "
        f"validation loss {summary['val_loss']:.5f}, checkpoint {summary['checkpoint']}"
    )
    if args.export:
        from mrprior.priors.cards import export_prior

        card = export_prior(summary["checkpoint"], args.export, name=cfg.name)
        print(f"exported {card}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from mrprior.priors.cards import export_prior

    card = export_prior(
        args.checkpoint,
        args.output,
        name=args.name,
        use_ema=not args.raw,
        validate=not args.no_validate,
    )
    print(f"exported {card}")
    return 0


def run_info(args: argparse.Namespace) -> int:
    import yaml

    from mrprior.priors import load

    prior = load(args.prior, device="cpu")
    print(yaml.safe_dump(prior.card, sort_keys=False, allow_unicode=True), end="")
    return 0
