"""``privfer audit MODEL --members SPEC --non-members SPEC``: a membership-inference attack on a model, with the
empirical epsilon lower bound it implies beside the epsilon its model card claims."""
from __future__ import annotations

import argparse
import json
import sys


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ..eval.audit import ATTACKS

    p = sub.add_parser(
        "audit", help="membership-inference audit: attack AUC, TPR at low FPR, empirical epsilon lower bound",
        description="Attack MODEL: tell its training examples (--members, which its model card must show it was "
                    "trained on, by content hash) from examples it never saw (--non-members). Reports ROC AUC, TPR "
                    "at 1% and 0.1% FPR, balanced attack accuracy and the epsilon lower bound the attack implies at "
                    "95% confidence (Clopper-Pearson), beside the epsilon the model card claims. The lira attack "
                    "trains shadow models with the model's own recipe (from its card): this costs CPU time; they "
                    "are cached and reused.")
    p.add_argument("model", metavar="MODEL", help="run directory, .safetensors file (card beside it) or shipped model name")
    p.add_argument("--members", required=True, metavar="SPEC", help="training examples of MODEL, KIND:PATH[@SPLIT]")
    p.add_argument("--non-members", required=True, metavar="SPEC", help="examples MODEL never saw, e.g. the val split")
    p.add_argument("--attack", choices=ATTACKS, default="loss",
                   help="loss (Yeom et al. 2018), confidence (true-class probability) or lira (Carlini et al. 2022); "
                        "default loss")
    p.add_argument("--limit", type=int, metavar="N", help="audit a fixed-seed sample of N examples from each side")
    p.add_argument("--drop-overlap", action="store_true",
                   help="leave out non-members whose image is training data (instead of refusing)")
    p.add_argument("--private-only", action="store_true",
                   help="keep only members trained on with DP-SGD (the data the claimed epsilon covers)")
    p.add_argument("--shadows", type=int, default=4, metavar="N", help="lira: number of shadow models, even (default 4)")
    p.add_argument("--shadow-epochs", type=int, metavar="E", help="lira: train shadows for E epochs instead of the recipe's")
    p.add_argument("--population", type=int, metavar="N",
                   help="lira: shadow population size (default: just the audited examples; more are drawn from the "
                        "other members and non-members)")
    p.add_argument("--offline", action="store_true", help="lira: offline variant (OUT shadow models only)")
    p.add_argument("--shadow-cache", metavar="DIR", help="lira: shadow model cache (default $PRIVFER_CACHE/shadows)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a summary")
    p.add_argument("--out", metavar="DIR", help="write audit.json and roc.png here (RUN/audit/NAME to show it in privfer report)")
    p.add_argument("--batch-size", type=int, default=512, help="faces per forward pass (default 512)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..eval.audit import audit, format_summary, write_audit

    result, sm, sn = audit(
        args.model, args.members, args.non_members, attack=args.attack, limit=args.limit,
        drop_overlap=args.drop_overlap, private_only=args.private_only, n_shadows=args.shadows,
        shadow_epochs=args.shadow_epochs, population=args.population, shadow_cache=args.shadow_cache,
        offline=args.offline, batch_size=args.batch_size, progress=not args.quiet and not args.json)
    if args.out:
        paths = write_audit(result, sm, sn, args.out)
        print(f"wrote {', '.join(str(p) for p in paths)}", file=sys.stderr if args.json else sys.stdout)
    if args.json and (result.get("shadows") or {}).get("fit_warning"):
        print(f"privfer audit: warning: {result['shadows']['fit_warning']}", file=sys.stderr)
    print(json.dumps(result) if args.json else format_summary(result))
    return 0
