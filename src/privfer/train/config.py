"""Training configuration: one dataclass, loaded from YAML/JSON and overridden by command-line flags."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ..errors import PrivferError

#: How a run may store its weights (``weights_dtype``).
STORED_DTYPES = ("float32", "float16", "int8")


@dataclass
class TrainConfig:
    """Every setting of a training run. ``private`` data is only ever trained on with DP-SGD;
    ``public`` data only without DP. The README's "Training" section explains each group."""

    # data
    public: str | None = None           # KIND:PATH[@SPLIT], trained on without DP (stage 1)
    private: str | None = None          # KIND:PATH[@SPLIT], trained on only with DP-SGD (stage 2)
    public_split: float | None = None   # carve this fraction of `private` out as public, by content hash
    val: str | None = None              # validation spec; default: the `val` split of the training dataset
    limit: int | None = None            # use only the first N training samples (quick runs, tests)
    dedupe: bool = True                 # private data: each distinct image (content hash) once, so that the
                                        # guarantee holds per image, not per record (k copies: only k*epsilon)
    labels: str = "majority"            # majority | votes (soft targets where the dataset has votes)
    input_size: int = 48
    # model
    model: str = "fusion"
    model_kwargs: dict = field(default_factory=dict)
    init_from: str | None = None        # start from a trained model's weights (run directory or shipped name):
                                        # every tensor of it is copied into the same-named one; runs without
                                        # private data only (models/io.py: init_weights)
    project_whiten: float = 0.0         # with model_kwargs project: scale the public basis' directions by their
                                        # public variance to the power -project_whiten/2, in [-1, 1] (0: plain,
                                        # 1: whitened), total variance kept (train/subspace.py)
    # private stage (DP-SGD)
    epsilon: float = 8.0
    delta: float = 1e-5
    epochs: int = 10
    batch_size: int = 1024              # expected logical batch (Poisson sampling)
    physical_batch_size: int = 256      # memory bound: logical batches are split into these (virtual steps)
    max_grad_norm: float = 1.0
    aug_mult: int = 1                   # augmentation multiplicity K (views averaged inside each per-example gradient)
    clipping: str = "flat"              # flat: Opacus' per-example gradients, then clipping | ghost: Opacus' ghost
                                        # clipping (per-example norms without the gradients; the same update, far
                                        # faster for wide linear layers; K = 1, one process)
    optimizer: str = "sgd"              # sgd (momentum) | adamw
    lr: float = 2.0
    momentum: float = 0.9
    weight_decay: float = 0.0
    public_mix: float = 0.0             # two-stage runs: add to every DP step's released gradient the gradient on a
                                        # public batch, rescaled to public_mix * max_grad_norm (no privacy cost)
    center_noise: float = 20.0          # models with a feature centre (model_kwargs center: true) and no public
                                        # data: noise multiplier of the private features' mean (train/center.py)
    # public stage (non-private)
    public_epochs: int = 10
    public_batch_size: int = 128
    public_optimizer: str = "adamw"
    public_lr: float = 1e-3
    public_weight_decay: float = 1e-4
    public_mixup: float = 0.0           # > 0: mixup in the public stage (Zhang et al. 2018): each batch trains on
                                        # convex mixtures of pairs of its inputs (for fixed front-ends, their
                                        # features) with the same mixture of their losses, the weight drawn from
                                        # Beta(public_mixup, public_mixup); not in the DP stage (a mixture is two
                                        # examples' data in one per-example gradient)
    # both stages
    label_smoothing: float = 0.0        # hard labels only (votes are soft targets already)
    negative_weight: float = 0.0        # weight of a negative-vs-rest logistic loss added to each example's
                                        # loss (train/objective.py): trains the negative score directly
    augment: bool = True
    augment_ranges: dict | None = None  # end-to-end training: ranges of the random transforms, overriding
                                        # train/augment.py's Augment defaults (e.g. {rotate: 0, scale: 0})
    feature_cache: bool = True          # fixed front-ends: cached features of each face and its mirror (fast);
                                        # false: the front-end runs on randomly transformed faces every step
    aug_views: int = 0                  # with the feature cache: also cache N fixed randomly transformed copies of
                                        # each face (shift, rotation, zoom, brightness, contrast) and train on them
    warmup_frac: float = 0.05           # linear warm-up, then cosine decay to 0
    ema_decay: float = 0.99
    negative_recall: float | None = None  # threshold meets this recall on validation (else: max F1)
    class_bias: str = "off"             # off | mixed | balanced: per-class logit offsets fit on validation
    min_recall: dict | None = None      # {class: floor}: then raise those classes' offsets until each one's
                                        # validation recall is at least its floor (e.g. {disgust: 0.4})
    select: str = "best"                # best (validation accuracy of EMA weights) | last
    weights_dtype: str = "float32"      # float32 | float16 | int8: how model.safetensors stores the weights
                                        # (float16 halves the file, int8 with per-row scales quarters the large
                                        # layers; the card is calibrated on the rounded weights, and loading
                                        # widens them to float32: models/io.py)
    seed: int = 0
    threads: int | None = None
    device: str = "auto"                # auto (cuda:LOCAL_RANK if available, else cpu) | cpu | cuda
    out: str = "runs/latest"

    @classmethod
    def from_file(cls, path: str | Path, **overrides) -> "TrainConfig":
        p = Path(path)
        if not p.is_file():
            raise PrivferError(f"{p}: config file not found")
        text = p.read_text()
        try:
            if p.suffix in (".yaml", ".yml"):
                import yaml

                data = yaml.safe_load(text) or {}
            else:
                data = json.loads(text)
        except Exception as e:  # yaml and json raise many types
            raise PrivferError(f"{p}: cannot parse config ({str(e).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise PrivferError(f"{p}: config must be a mapping of settings")
        return cls.from_dict(data, source=str(p), **overrides)

    @classmethod
    def from_dict(cls, data: dict, source: str = "config", **overrides) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise PrivferError(f"{source}: unknown config keys {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        merged = {**data, **{k: v for k, v in overrides.items() if v is not None}}
        return cls(**merged).validated()

    def validated(self) -> "TrainConfig":
        if not self.public and not self.private:
            raise PrivferError("nothing to train on: give --public SPEC and/or --private SPEC")
        if self.public_split is not None:
            if not self.private or self.public:
                raise PrivferError("--public-split makes the public set out of --private data; use it with --private alone")
            if not 0 < self.public_split < 1:
                raise PrivferError(f"--public-split must be in (0, 1), got {self.public_split}")
        if self.model_kwargs.get("project") and not (self.public or self.public_split):
            raise PrivferError("model_kwargs project: the feature subspace is learnt from public data; give --public "
                               "or --public-split (from private data it would need privacy)")
        if self.project_whiten and not self.model_kwargs.get("project"):
            raise PrivferError("project_whiten scales the public feature subspace: it needs model_kwargs project")
        if not -1 <= self.project_whiten <= 1:
            raise PrivferError(f"project_whiten must be in [-1, 1], got {self.project_whiten}")
        if self.public_mix < 0:
            raise PrivferError(f"public_mix must be >= 0, got {self.public_mix}")
        if self.public_mix and not (self.private and (self.public or self.public_split)):
            raise PrivferError("public_mix adds a public gradient to each DP step: it needs --private data and "
                               "--public (or --public-split) data")
        if self.public_mixup < 0:
            raise PrivferError(f"public_mixup must be >= 0, got {self.public_mixup}")
        if self.public_mixup and not (self.public or self.public_split):
            raise PrivferError("public_mixup mixes examples in the public stage: it needs --public (or --public-split) "
                               "data (under DP a mixture would put two examples in one clipped gradient)")
        if self.weights_dtype not in STORED_DTYPES:
            raise PrivferError(f"weights_dtype must be one of {', '.join(STORED_DTYPES)}, got {self.weights_dtype!r}")
        if self.init_from and self.private:
            raise PrivferError("init_from: a run with private data cannot start from another model (nothing shows "
                               "that model never learnt from this run's private data, and if it did the guarantee "
                               "would not hold); train on public data in the same run's public stage instead, which "
                               "is checked by content hash")
        if self.aug_mult < 1:
            raise PrivferError(f"--aug-mult must be >= 1, got {self.aug_mult}")
        if self.clipping not in ("flat", "ghost"):
            raise PrivferError(f"clipping must be flat or ghost, got {self.clipping!r}")
        if self.clipping == "ghost" and self.aug_mult != 1:
            raise PrivferError(f"clipping ghost clips each view's gradient, not their mean over K views: it needs "
                               f"--aug-mult 1, got {self.aug_mult} (or use --clipping flat)")
        if self.aug_views < 0:
            raise PrivferError(f"--aug-views must be >= 0, got {self.aug_views}")
        if self.aug_views and not (self.augment and self.feature_cache):
            raise PrivferError("--aug-views caches augmented features: it needs augmentation and the feature cache "
                               "(drop --no-augment / --no-feature-cache, or --aug-views)")
        if self.augment_ranges is not None:
            from dataclasses import fields

            from .augment import Augment

            known = {f.name for f in fields(Augment)}
            if not isinstance(self.augment_ranges, dict):
                raise PrivferError(f"augment_ranges must be a mapping such as {{rotate: 0}}, got {self.augment_ranges!r}")
            bad = sorted(set(self.augment_ranges) - known)
            if bad:
                raise PrivferError(f"augment_ranges: unknown {', '.join(bad)}; known: {', '.join(sorted(known))}")
            for k, v in self.augment_ranges.items():
                ok = isinstance(v, bool) if k == "flip" else (isinstance(v, (int, float)) and not isinstance(v, bool)
                                                               and v >= 0)
                if not ok:
                    raise PrivferError(f"augment_ranges: {k} must be {'true or false' if k == 'flip' else 'a number >= 0'}"
                                       f", got {v!r}")
        for name in ("epochs", "public_epochs", "batch_size", "public_batch_size", "physical_batch_size"):
            if getattr(self, name) < 1:
                raise PrivferError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.optimizer not in ("sgd", "adamw") or self.public_optimizer not in ("sgd", "adamw"):
            raise PrivferError("optimizer must be sgd or adamw")
        if self.labels not in ("majority", "votes"):
            raise PrivferError(f"labels must be majority or votes, got {self.labels!r}")
        if self.class_bias not in ("off", "mixed", "balanced"):
            raise PrivferError(f"class_bias must be off, mixed or balanced, got {self.class_bias!r}")
        from ..eval.calibrate import check_min_recall
        from ..taxonomy import CLASSES

        self.min_recall = check_min_recall(self.min_recall, CLASSES) or None
        if self.select not in ("best", "last"):
            raise PrivferError(f"select must be best or last, got {self.select!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise PrivferError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if not self.center_noise > 0:
            raise PrivferError(f"center_noise must be > 0, got {self.center_noise}")
        if not 0 <= self.label_smoothing < 1:
            raise PrivferError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if not self.negative_weight >= 0:
            raise PrivferError(f"negative_weight must be >= 0, got {self.negative_weight}")
        if not 0 <= self.ema_decay < 1:
            raise PrivferError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.max_grad_norm <= 0:
            raise PrivferError(f"max_grad_norm must be > 0, got {self.max_grad_norm}")
        return self

    @property
    def stages(self) -> list[str]:
        """Stages in order: 'public' (no DP) and/or 'private' (DP-SGD)."""
        return (["public"] if self.public or self.public_split else []) + (["private"] if self.private else [])

    def to_dict(self) -> dict:
        return asdict(self)
