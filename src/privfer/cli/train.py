"""``privfer train``: parse flags into a TrainConfig and run the training loop."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import PrivferError
from ..train.config import STORED_DTYPES


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a model (DP-SGD on --private data, non-private on --public data)",
                       description="Data named by --private is trained on only with DP-SGD; data named by --public only "
                                   "without DP. Both: stage 1 public (no DP), stage 2 DP fine-tuning on private data.")
    p.add_argument("--config", help="YAML/JSON config file (flags override it)")
    p.add_argument("--public", help="KIND:PATH[@SPLIT] trained on WITHOUT privacy")
    p.add_argument("--private", help="KIND:PATH[@SPLIT] trained on only with DP-SGD")
    p.add_argument("--public-split", type=float, help="with --private alone: make this fraction of it public by content hash")
    p.add_argument("--val", help="validation spec (default: the dataset's val split)")
    p.add_argument("--model", help="cnn | resnet | fusion (default) | scatter | scatter-linear | face-linear | facemesh-linear | "
                                    "face-onet-linear | facemesh-onet-linear | facemesh-tuned")
    p.add_argument("--model-kwargs", metavar="JSON",
                   help='model options as a JSON object, merged into the config\'s model_kwargs (e.g. \'{"hidden": 32}\')')
    p.add_argument("--init-from", metavar="MODEL",
                   help="start from a trained model's weights (run directory or shipped name); no private data")
    p.add_argument("--project-whiten", type=float, metavar="A",
                   help="with model_kwargs project: scale each public principal direction by its variance to the "
                        "power -A/2 (0 plain, 1 whitened)")
    p.add_argument("--public-mix", type=float, metavar="W",
                   help="two-stage runs: add to each DP step the gradient on a public batch, rescaled to W times the "
                        "clipping norm (public data: no privacy cost; default 0, off)")
    p.add_argument("--weights-dtype", choices=STORED_DTYPES,
                   help="how the saved weights are stored (float16: half the file; int8: the layers' weight matrices as "
                        "int8 with per-row scales, a quarter; calibrated on the rounded weights)")
    p.add_argument("--epsilon", type=float)
    p.add_argument("--delta", type=float)
    p.add_argument("--epochs", type=int, help="epochs of the private stage (or of the only stage)")
    p.add_argument("--public-epochs", type=int)
    p.add_argument("--batch-size", type=int, help="expected logical batch of the private stage (or the only stage)")
    p.add_argument("--physical-batch-size", type=int)
    p.add_argument("--max-grad-norm", type=float)
    p.add_argument("--aug-mult", type=int, help="augmentation multiplicity K under DP")
    p.add_argument("--clipping", choices=["flat", "ghost"],
                   help="how DP-SGD clips: flat (default) computes each example's gradient, ghost (Opacus' ghost "
                        "clipping) only each example's gradient norm, then a second backward pass: the same update, "
                        "much faster for wide linear layers such as a hidden layer (needs --aug-mult 1, one process)")
    p.add_argument("--lr", type=float)
    p.add_argument("--public-lr", type=float)
    p.add_argument("--weight-decay", type=float, help="weight decay of the private stage (or the only stage)")
    p.add_argument("--public-weight-decay", type=float, help="weight decay of the public stage")
    p.add_argument("--public-mixup", type=float, metavar="A",
                   help="mixup in the public stage: train on mixtures of pairs of inputs (features, for fixed "
                        "front-ends) with the same mixture of their losses, weights from Beta(A, A) (default 0, off)")
    p.add_argument("--optimizer", choices=["sgd", "adamw"])
    p.add_argument("--label-smoothing", type=float,
                   help="hard labels of both stages: target 1 - s on the label and s / K spread over the K classes "
                        "(bounds how far the loss pushes an already well-classified example; default 0)")
    p.add_argument("--negative-weight", type=float,
                   help="add this weight times a negative-vs-rest logistic loss on the negative log-odds to each "
                        "example's loss (both stages; clipped with it under DP, so no privacy cost; default 0)")
    p.add_argument("--ema-decay", type=float,
                   help="decay of the exponential moving average of the weights, which is what is evaluated and "
                        "saved (post-processing: no privacy cost; default 0.99)")
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--no-dedupe", action="store_true",
                   help="train on every record of the private data, duplicate images included (the guarantee then "
                        "covers each record: an image present k times only at k*epsilon)")
    p.add_argument("--no-feature-cache", action="store_true",
                   help="models with a fixed front-end: run it on randomly transformed faces at every step "
                        "(full augmentation, slower) instead of training on cached features of each face and its mirror")
    p.add_argument("--aug-views", type=int,
                   help="models with a fixed front-end: also cache the features of N fixed, randomly transformed copies "
                        "of each face (shift, rotation, zoom, brightness, contrast; computed once) and train on a "
                        "random view of each face, or K of them inside each clipped gradient with --aug-mult K "
                        "(default 0: the face and its mirror only)")
    p.add_argument("--labels", choices=["majority", "votes"])
    p.add_argument("--negative-recall", type=float, help="fit the negative threshold to meet this validation recall")
    p.add_argument("--class-bias", choices=["off", "mixed", "balanced"],
                   help="per-class logit offsets fit on validation: mixed maximises accuracy + balanced accuracy, "
                        "balanced the mean per-class recall (default off)")
    p.add_argument("--min-recall", metavar="CLASS=R[,CLASS=R]",
                   help="then raise these classes' offsets until each one's validation recall is at least R "
                        "(e.g. disgust=0.35,fear=0.35; with --class-bias off they alone move offsets)")
    p.add_argument("--limit", type=int, help="use only the first N training samples")
    p.add_argument("--seed", type=int)
    p.add_argument("--threads", type=int)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"],
                   help="auto (default): this process' GPU if CUDA is available, else CPU. Several processes: "
                        "launch with torchrun --nproc_per_node N -m privfer train ... (see docs/distributed.md)")
    p.add_argument("--out", help="run directory (default runs/latest)")
    p.add_argument("--resume", metavar="DIR", help="continue an interrupted run exactly (optionally with more --epochs)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..train.config import TrainConfig
    from ..train.loop import train

    overrides = {
        "public": args.public, "private": args.private, "public_split": args.public_split, "val": args.val,
        "model": args.model, "init_from": args.init_from, "epsilon": args.epsilon, "delta": args.delta, "epochs": args.epochs,
        "public_epochs": args.public_epochs, "batch_size": args.batch_size,
        "physical_batch_size": args.physical_batch_size, "max_grad_norm": args.max_grad_norm,
        "aug_mult": args.aug_mult, "clipping": args.clipping, "lr": args.lr, "public_lr": args.public_lr, "optimizer": args.optimizer,
        "weight_decay": args.weight_decay, "public_weight_decay": args.public_weight_decay,
        "public_mixup": args.public_mixup,
        "label_smoothing": args.label_smoothing,
        "negative_weight": args.negative_weight, "ema_decay": args.ema_decay,
        "augment": False if args.no_augment else None, "labels": args.labels,
        "feature_cache": False if args.no_feature_cache else None, "aug_views": args.aug_views,
        "dedupe": False if args.no_dedupe else None,
        "negative_recall": args.negative_recall, "class_bias": args.class_bias, "min_recall": args.min_recall,
        "limit": args.limit, "project_whiten": args.project_whiten,
        "weights_dtype": args.weights_dtype, "public_mix": args.public_mix,
        "seed": args.seed, "threads": args.threads,
        "device": args.device,
    }
    if args.public and not args.private and not args.public_split and not args.config:
        # Non-private only: --epochs/--batch-size/--lr name the (only) public stage.
        overrides.update(public_epochs=args.epochs or args.public_epochs, public_batch_size=args.batch_size,
                         public_lr=args.lr or args.public_lr,
                         public_weight_decay=args.weight_decay if args.weight_decay is not None else args.public_weight_decay,
                         epochs=None, batch_size=None, lr=None, weight_decay=None)
    if args.resume:
        run_dir = Path(args.resume)
        cfg_file = run_dir / "config.json"
        if not (run_dir / "checkpoint" / "state.json").is_file() or not cfg_file.is_file():
            raise PrivferError(f"{run_dir}: not a privfer run directory (no config.json and checkpoint/state.json)")
        saved = json.loads(cfg_file.read_text())
        extra = {k: v for k, v in overrides.items()
                 if v is not None and k in ("epochs", "public_epochs", "threads", "device")}
        cfg = TrainConfig.from_dict({**saved, "out": str(run_dir)}, source=str(cfg_file), **extra)
        train(cfg, resume=True, progress=not args.quiet)
        return 0
    if args.config:
        cfg = TrainConfig.from_file(args.config, out=args.out, **overrides)
    else:
        cfg = TrainConfig.from_dict({}, source="flags", out=args.out or "runs/latest", **overrides)
    if args.model_kwargs is not None:
        try:
            extra = json.loads(args.model_kwargs)
        except json.JSONDecodeError as e:
            raise PrivferError(f"--model-kwargs: not valid JSON ({e.msg})") from None
        if not isinstance(extra, dict):
            raise PrivferError(f"--model-kwargs: expected a JSON object such as '{{\"hidden\": 32}}', got {args.model_kwargs!r}")
        cfg = TrainConfig.from_dict({**cfg.to_dict(), "model_kwargs": {**cfg.model_kwargs, **extra}}, source="--model-kwargs")
    train(cfg, progress=not args.quiet)
    return 0
