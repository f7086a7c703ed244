"""`longdoc sweep`: which window size, overlap and head suit this data, in one command.

The seed's advice ("experiment with chunk sizes, overlaps and pooling") as a procedure:
every point of a grid (window size x overlap x head x cap) is trained with frozen encoder
features and `longdoc train`'s defaults, once per seed, scored on validation data (the
``--validation`` folder, or the same stratified slice of ``--train`` for every trial), and
ranked by the mean validation score over the seeds. The winner is retrained with its best
seed into ``OUTPUT/winner``: a `longdoc train` output that `longdoc export --checkpoint`
takes as is.

Costs: the encoder runs once per window placement (``max_length``, ``overlap``,
``strategy``) and data: heads, caps and seeds share that feature cache
(:mod:`longdoc.features`), so a grid costs one feature extraction per window size x overlap
and seconds per head and seed after that. The default grid (2 placements x 3 heads) fits a
laptop; a wider one is ``--grid``.

A grid is given as words ``key=v1,v2`` (their product) or as a JSON/YAML file holding one
such mapping of lists, or a list of them (the union of their products). Several ``--grid``
are a union too: ``--grid "max_length=512 overlap=0,128" --grid "max_length=256
overlap=64"`` is three points per head. Keys: max_length, overlap, head, max_chunks,
overflow (default head_tail when max_chunks > 0), strategy, window.

Multi-label data (``longdoc train`` recognises it) is scored by validation micro-F1 and
macro-F1 instead of accuracy and macro-F1 (``--metric micro_f1`` ranks by the former).
"""

from __future__ import annotations

import itertools
import json
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from longdoc.chunking import ChunkingConfig
from longdoc.contract import HEADS
from longdoc.training.config import WINDOW_MODES, TrainConfig

DEFAULT_GRID = "max_length=256,512 overlap=64 head=mean-pool,logits-mean,transformer"
METRICS = ("macro_f1", "accuracy", "micro_f1")
# The two scores each problem's trials record (``fit.validation_scores``), tie-break order.
SCORES = {"single-label": ("macro_f1", "accuracy"), "multi-label": ("micro_f1", "macro_f1")}
WINNER = "winner"
TRIALS = "trials"


@dataclass(frozen=True)
class Point:
    """One configuration of the grid: a chunking and a head."""

    max_length: int = 512
    overlap: int = 128
    head: str = "mean-pool"
    max_chunks: int = 0
    overflow: str = ""  # "" : head_tail under a cap, error (unused) without one
    strategy: str = "fixed"
    window: str = "chunks"

    def chunking(self) -> dict:
        overflow = self.overflow or ("head_tail" if self.max_chunks else "error")
        return {
            "max_length": self.max_length,
            "overlap": self.overlap,
            "max_chunks": self.max_chunks,
            "overflow": overflow,
            "strategy": self.strategy,
        }

    def name(self) -> str:
        """A folder name that says what the point is: ``mean-pool_512-128[_cap64-head_tail]``."""
        text = f"{self.head}_{self.max_length}-{self.overlap}"
        if self.max_chunks:
            text += f"_cap{self.max_chunks}-{self.chunking()['overflow']}"
        if self.strategy != "fixed":
            text += f"_{self.strategy}"
        if self.window != "chunks":
            text += f"_{self.window}"
        return text


KEYS = {f.name: f.type for f in fields(Point)}
CASTS: dict[str, Callable[[str], object]] = {
    "max_length": int,
    "overlap": int,
    "max_chunks": int,
}


def _product(mapping: dict) -> list[Point]:
    unknown = sorted(set(mapping) - set(KEYS))
    if unknown:
        raise ValueError(f"unknown grid key {', '.join(unknown)}; keys: {', '.join(KEYS)}")
    names = list(mapping)
    lists = [v if isinstance(v, list) else [v] for v in mapping.values()]
    points = []
    for values in itertools.product(*lists):
        kwargs = {k: CASTS.get(k, str)(v) for k, v in zip(names, values, strict=True)}
        points.append(Point(**kwargs))
    return points


def _parse_words(text: str) -> dict:
    mapping = {}
    for word in text.split():
        key, sep, values = word.partition("=")
        if not sep or not values:
            raise ValueError(f"grid word {word!r}: expected key=value[,value...]")
        mapping[key.strip()] = [v for v in values.split(",") if v]
    return mapping


def parse_grid(specs: list[str]) -> list[Point]:
    """The points of one or more grid specifications (words or JSON/YAML files), in order,
    without duplicates; each point's chunking checked before anything runs."""
    mappings: list[dict] = []
    for spec in specs:
        path = Path(spec)
        if "=" not in spec and path.is_file():
            if path.suffix in (".yaml", ".yml"):
                import yaml

                loaded = yaml.safe_load(path.read_text())
            else:
                loaded = json.loads(path.read_text())
            mappings.extend(loaded if isinstance(loaded, list) else [loaded])
        else:
            mappings.append(_parse_words(spec))
    points: list[Point] = []
    for mapping in mappings:
        for point in _product(mapping):
            if point not in points:
                points.append(point)
    for point in points:
        if point.head not in HEADS:
            raise ValueError(f"grid: unknown head {point.head!r}; choose from {HEADS}")
        if point.window not in WINDOW_MODES:
            raise ValueError(f"grid: window must be one of {WINDOW_MODES}")
        ChunkingConfig.from_dict(point.chunking(), source=f"grid point {point.name()}")
    if not points:
        raise ValueError("the grid is empty")
    return points


@dataclass
class SweepConfig:
    """What `longdoc sweep` is asked to do."""

    train: Path
    output: Path
    validation: Path | None = None
    grid: list[str] = field(default_factory=lambda: [DEFAULT_GRID])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    metric: str = "macro_f1"
    encoder: Path | None = None
    preset: str | None = None
    cache_dir: Path | None = None
    validation_fraction: float = 0.15
    keep_trials: bool = False  # save every trial's checkpoint (to evaluate each later)
    progress: bool = True


def _trial_config(cfg: SweepConfig, point: Point, seed: int, encoder: Path, output: Path):
    return TrainConfig(
        train=cfg.train,
        output=output,
        validation=cfg.validation,
        encoder=encoder,
        head=point.head,
        freeze_encoder=True,
        window=point.window,
        chunking=point.chunking(),
        seed=seed,
        cache_dir=cfg.cache_dir,
        progress=cfg.progress,
        validation_fraction=cfg.validation_fraction,
    )


def _summary(point: Point, trials: list[dict], metric: str, scores=SCORES["single-label"]) -> dict:
    """One table row: the point, and its validation scores' mean and spread over seeds."""
    row: dict = {"point": point.name(), **asdict(point), **point.chunking()}
    for name in scores:
        values = [t[f"validation_{name}"] for t in trials]
        row[f"validation_{name}"] = round(statistics.fmean(values), 4)
        row[f"validation_{name}_std"] = round(statistics.pstdev(values), 4)
    best = max(trials, key=lambda t: (t[f"validation_{metric}"], -t["seed"]))
    row["best_seed"] = best["seed"]
    row["seeds"] = len(trials)
    row["train_seconds"] = round(statistics.fmean(t["train_seconds"] for t in trials), 2)
    row["feature_seconds"] = max(t["feature_seconds"] for t in trials)
    row["windows"] = trials[0]["windows"]
    return row


def run_sweep(cfg: SweepConfig, log: Callable[[str], None] = print) -> dict:
    """Train every grid point with every seed, rank, keep the winner; returns the report
    (also ``sweep.json``, ``sweep.csv``, ``sweep.png`` under ``cfg.output``)."""
    from tqdm import tqdm

    from longdoc.features import default_cache_dir
    from longdoc.training.sweep_report import plot_sweep, table_text, write_csv
    from longdoc.training.trainer import resolve_encoder, train

    if cfg.metric not in METRICS:
        raise ValueError(f"--metric must be one of {METRICS}")
    if not cfg.seeds:
        raise ValueError("--seeds: give at least one seed")
    points = parse_grid(cfg.grid)
    cfg.cache_dir = Path(cfg.cache_dir or default_cache_dir())
    # One encoder for every trial (a preset is materialised once, with seed 0), so the
    # trials share its feature cache: seeds vary the head's initialisation and batches.
    encoder = resolve_encoder(cfg.encoder, cfg.preset, cfg.cache_dir)
    cfg.output.mkdir(parents=True, exist_ok=True)
    # Trials of one window placement run together: the first computes its features.
    order = sorted(points, key=lambda p: (p.window, p.max_length, p.overlap, p.strategy))
    quiet: list[str] = []
    trials: list[dict] = []
    seen: set[tuple] = set()
    bar = tqdm(
        total=len(order) * len(cfg.seeds), desc="sweep", unit="trial", disable=not cfg.progress
    )
    for point in order:
        for seed in cfg.seeds:
            bar.set_postfix_str(f"{point.name()} seed {seed}")
            out = cfg.output / TRIALS / point.name() / f"seed{seed}"
            tcfg = _trial_config(cfg, point, seed, encoder, out)
            # Bars only where features may be computed: the first trial of a placement.
            placement = (point.window, point.max_length, point.overlap, point.strategy)
            tcfg.progress = cfg.progress and placement not in seen
            seen.add(placement)
            record = train(tcfg, log=quiet.append, save=cfg.keep_trials)
            best = record["best"]
            scores = SCORES[record.get("problem", "single-label")]
            if cfg.metric not in scores:
                raise ValueError(
                    f"--metric {cfg.metric}: {record.get('problem', 'single-label')} trials "
                    f"are scored by {' and '.join(scores)}"
                )
            trials.append(
                {
                    "point": point.name(),
                    "seed": seed,
                    "output": str(out),
                    **{f"validation_{name}": best[f"validation_{name}"] for name in scores},
                    "best_epoch": best["epoch"],
                    "epochs_run": len(record["history"]),
                    "train_seconds": record.get("train_seconds", 0.0),
                    "feature_seconds": record.get("feature_seconds", 0.0),
                    "feature_windows_computed": record.get("feature_windows_computed", 0),
                    "windows": record.get("windows", 0),
                    "validation": record["choices"]["validation"]["source"],
                }
            )
            bar.update(1)
    bar.close()
    key = f"validation_{cfg.metric}"
    rows = [
        _summary(p, [t for t in trials if t["point"] == p.name()], cfg.metric, scores)
        for p in order
    ]
    other = next(name for name in scores if name != cfg.metric)
    rows.sort(key=lambda r: (-r[key], -r[f"validation_{other}"]))
    top = rows[0]
    winner = next(p for p in points if p.name() == top["point"])
    log(
        f"winner: {winner.name()} (validation {cfg.metric} {top[key]:.3f} "
        f"± {top[key + '_std']:.3f} over {len(cfg.seeds)} seeds); retraining seed "
        f"{top['best_seed']} -> {cfg.output / WINNER}"
    )
    wcfg = _trial_config(cfg, winner, top["best_seed"], encoder, cfg.output / WINNER)
    wcfg.progress = False
    train(wcfg, log=quiet.append, save=True)
    report = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
        "encoder": str(encoder),
        "metric": cfg.metric,
        "validation": trials[0]["validation"],
        "rows": rows,
        "trials": trials,
        "winner": {
            "point": winner.name(),
            "seed": top["best_seed"],
            "path": str(cfg.output / WINNER),
            **asdict(winner),
            **winner.chunking(),
        },
    }
    (cfg.output / "sweep.json").write_text(json.dumps(report, indent=2) + "\n")
    write_csv(rows, cfg.output / "sweep.csv")
    text = table_text(rows, cfg.metric)
    (cfg.output / "sweep.txt").write_text(text + "\n")
    log(text)
    try:
        plot_sweep(rows, cfg.metric, cfg.output / "sweep.png")
    except ImportError:
        log("matplotlib is not installed: no sweep.png")
    return report


def register(subparsers) -> None:
    """`longdoc sweep`: flags onto :class:`SweepConfig`."""
    from longdoc.training.cli import add_data_args

    p = subparsers.add_parser(
        "sweep",
        help="try window sizes x overlaps x heads, keep the best as a checkpoint",
        description="Train every point of a grid (frozen encoder, `longdoc train` defaults) "
        "with each seed, rank the points by their mean validation score, write the table "
        "(sweep.csv, sweep.json, sweep.txt, sweep.png) and leave the winner in OUTPUT/winner, "
        "a checkpoint `longdoc export --checkpoint` takes. Grid: words key=v1,v2 (their "
        "product) or a JSON/YAML file; several --grid are a union. Keys: " + ", ".join(KEYS) + ".",
    )
    add_data_args(p)
    p.add_argument(
        "--grid",
        action="append",
        help=f'a grid: "key=v1,v2 ..." or a JSON/YAML file (default: "{DEFAULT_GRID}")',
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds per point")
    p.add_argument("--metric", choices=METRICS, default="macro_f1", help="what ranks the points")
    p.add_argument(
        "--keep-trials",
        action="store_true",
        help="save every trial's checkpoint under OUTPUT/trials (to evaluate each later)",
    )
    p.add_argument("--output", type=Path, required=True, help="folder for the table and winner")
    p.set_defaults(func=run)


def run(args) -> int:
    from longdoc.cli_options import UsageError, config_from_args
    from longdoc.data import DataError

    cfg = config_from_args(
        SweepConfig, args, grid=args.grid or [DEFAULT_GRID], progress=not args.no_progress
    )
    try:
        run_sweep(cfg)
    except (DataError, ValueError, FileNotFoundError) as exc:
        raise UsageError(str(exc)) from None
    return 0
