"""The `selfsup` command line: parse, resolve the config, call the layers."""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

from selfsup.errors import SelfSupError


def _pretrain(args) -> int:
    from selfsup.config import check_config, resolve_config
    from selfsup.data.datasets import load_dataset
    from selfsup.engine.trainer import pretrain
    from selfsup.methods import get_method

    method_cls = get_method(args.method)
    flags = {"method": args.method, "data": args.data, "backbone": args.backbone, "epochs": args.epochs,
             "batch_size": args.batch_size, "out": args.out,
             "resume": True if args.resume or args.resume_with_changes else None,
             "resume_with_changes": True if args.resume_with_changes else None,
             "device": args.device}
    cfg = resolve_config(method_cls, args.config, flags, args.overrides,
                         image_size_of=lambda spec: load_dataset(spec).image_size)
    if args.print_config:
        from selfsup.config import describe_config

        print(describe_config(cfg, method_cls), end="")
        return 0
    if not cfg.data:
        raise SelfSupError("no data given: pass --data SPEC (a folder, .tar, or FORMAT:PATH)")
    check_config(cfg)                       # before the monitor loads its data
    on_epoch_end = None
    if cfg.monitor.knn:
        from selfsup.eval.monitor import KnnMonitor

        monitor = KnnMonitor(cfg.monitor.knn, images=cfg.monitor.images, every=cfg.monitor.every, seed=cfg.seed)
        on_epoch_end = lambda t: monitor(t.backbone, t.epoch - 1, t.method.evaluation_tap(),   # noqa: E731
                                         t.method.image_size, t.device)
    out, status = pretrain(cfg, on_epoch_end)
    if int(os.environ.get("RANK", "0")) == 0:
        from selfsup.report import run_report

        run_report(out)
    print(f"{status}: checkpoint {out / 'last.pt'}, report {out / 'report.md'}")
    return 0 if status == "done" else 130


def _finetune(args) -> int:
    from selfsup.finetune import finetune

    overrides = [*args.overrides, *(["resume_with_changes=true"] if args.resume_with_changes else [])]
    result = finetune(args.init, args.data, args.test_data, args.recipe, args.epochs, args.batch_size, args.out,
                      args.device, overrides)
    if "top1" not in result:
        print(f"{result['status']}: checkpoint {result['checkpoint']} (run the same command again to resume)")
        return 130
    if args.json:
        print(json.dumps(result))
    else:
        changes = ", ".join(f"{k} {v}" for k, v in result["changes"].items()) or "none"
        top5 = f", top-5 {result['top5'] * 100:.1f}" if "top5" in result else ""     # none below 5 classes
        print(f"finetune ({result['recipe']}; changes: {changes}) on {result['n_train']} images: "
              f"top-1 {result['top1'] * 100:.1f}{top5} on {args.test_data}; checkpoint {result['checkpoint']}")
    return 0


def _transfer(args) -> int:
    from selfsup.transfer import transfer

    r = transfer(args.teacher, args.student, args.cluster_data, args.label_data, args.clusters, args.tap, args.pool,
                 args.iterations, args.epochs, args.batch_size, args.out or "runs/transfer", args.device, args.overrides,
                 args.seed, args.objective)
    p = r["pseudo_labels"]
    if p is None:
        what = "regressing the teacher's features"
    else:
        what = "reused" if p["reused"] else f"{p['clusters_used']} of {p['clusters']} clusters used, k-means {p['kmeans_s']} s"
        what = f"pseudo-labels {p['file']} ({what})"
    print(f"{what}; student {args.student} (lr {r['student_lr']}): {r['status']}, checkpoint {r['checkpoint']}")
    return 0 if r["status"] == "done" else 130


def _sweep(args) -> int:
    from selfsup.sweep import run_sweep

    result = run_sweep(args.file, parallel=args.parallel, out=args.out, overrides=args.overrides)
    share = result["overhead_s"] / max(result["wall_s"], 1e-9)
    print(f"sweep: {result['cells']} cells in {result['wall_s']:.0f} s (training {result['train_s']:.0f} s, "
          f"evaluation {result['eval_s']:.0f} s, overhead {result['overhead_s']:.1f} s = {share:.1%}); "
          f"{result['out']}/results.md, results.csv and plots")
    return 0


def _bench(args) -> int:
    from selfsup.bench import BENCH_METHODS, bench, profile_table, table

    methods = BENCH_METHODS if args.methods == "all" else args.methods.split(",")
    results = bench(methods, args.backbone, args.batch_size, args.image_size, args.steps, args.warmup, args.device,
                    args.overrides, profile=args.profile)
    print((profile_table if args.profile else table)(results, args.backbone, args.batch_size, args.image_size,
                                                     args.steps))
    return 0


def _patch_size(value: str):
    """--patch-size: "auto" (the checkpoint's), "multi" (None: multi-scale crops) or a side in pixels."""
    if value == "auto":
        return value
    if value == "multi":
        return None
    try:
        return int(value)
    except ValueError:
        raise SelfSupError(f"--patch-size {value!r}: give a side in pixels, auto or multi") from None


def _ints(flag: str, value: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in value.split(","))
    except ValueError:
        raise SelfSupError(f"{flag} {value!r}: give whole numbers separated by commas, e.g. 1,2,4,8") from None


def _suite(args) -> int:
    """eval svm | lowshot: Goyal et al.'s VOC07 and low-shot SVMs on every tap."""
    from selfsup.eval import suite

    if args.tap or args.pool:
        raise SelfSupError(f"eval {args.protocol} pools every tap with Goyal et al.'s fixed windows: drop --tap / "
                           f"--pool and name the taps with --taps, e.g. --taps conv3,conv4")
    common = dict(taps=_taps(args.taps), costs=args.costs, image_size=args.image_size, device=args.device,
                  batch_size=args.batch_size, cache=not args.no_cache, n_jobs=args.jobs, progress=not args.json)
    if args.protocol == "svm":
        result = suite.evaluate_svm(args.checkpoint, args.train_data, args.test_data, solver=args.solver, **common)
    else:
        result = suite.evaluate_lowshot(args.checkpoint, args.train_data, args.test_data,
                                        ks=_ints("--shots", args.shots), num_samples=args.samples,
                                        seed=args.seed or 0, **common)
    if args.json:
        print(json.dumps(result))
    else:
        print((suite.format_svm if args.protocol == "svm" else suite.format_lowshot)(result))
    return 0


def _cluster(args) -> int:
    from selfsup.cluster.evaluate import evaluate_clustering

    result = evaluate_clustering(args.checkpoint, args.test_data, args.clusters, args.tap,
                                 args.pool or "avg", args.iterations, args.spherical, args.pca, args.seed or 0,
                                 image_size=args.image_size, device=args.device, batch_size=args.batch_size,
                                 cache=not args.no_cache, progress=not args.json)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"cluster at {result['tap']} (k-means, {result['clusters']} clusters, {result['iterations']} iterations"
              f"{', spherical' if result['spherical'] else ''}{', PCA ' + str(result['pca']) if result['pca'] else ''}"
              f", {result['kmeans_s']:.1f} s): NMI {result['nmi']:.4f}  ARI {result['ari']:.4f}  "
              f"accuracy {result['accuracy']:.4f} ({result['n']} images)")
    return 0


def _eval(args) -> int:
    from selfsup.eval.run import evaluate

    if args.protocol == "svm" and args.seed is not None:          # knn: refused by evaluation_settings
        raise SelfSupError(f"--seed applies to eval linear, patches, cluster and lowshot: eval {args.protocol} draws "
                           f"nothing at random; drop --seed")
    if args.protocol == "cluster":
        return _cluster(args)
    if not args.train_data:
        raise SelfSupError(f"eval {args.protocol} needs --train-data SPEC (the labelled set to fit on)")
    if args.protocol in ("svm", "lowshot"):
        return _suite(args)

    patches = None
    if args.protocol == "patches":
        patches = dict(num_patches=args.num_patches, patch_size=_patch_size(args.patch_size), aggregate=args.aggregate,
                       window=args.window, stride=args.stride, chunk=args.chunk, seed=args.seed or 0)
    result = evaluate(args.protocol, args.checkpoint, args.train_data, args.test_data, tap=args.tap,
                      pool=args.pool, image_size=args.image_size, device=args.device,
                      batch_size=args.batch_size, k=args.k, temperature=args.temperature, epochs=args.probe_epochs, lr=args.lr,
                      cache=not args.no_cache, progress=not args.json, patches=patches,
                      probes=tuple(args.probe.split(",")), preset=args.preset,
                      taps=_taps(args.taps), cached=args.cached, seed=args.seed)
    if args.json:
        print(json.dumps(result))
    elif "taps" in result and isinstance(result["taps"], dict):
        from selfsup.eval.layerwise import format_layerwise

        print(format_layerwise(result))
    elif args.protocol == "patches":
        how = (f"{result['num_patches']} patches of {result['patch_size'] or 'multi-scale'} px, mean"
               if result["aggregate"] == "global" else f"local {result['window'] or 'half-side'} px windows")
        for probe in args.probe.split(","):
            print(f"{probe} on {how} ({result['feature_dim']} dims): top-1 {result[probe]['top1']:.4f}")
    else:
        from selfsup.eval.linear import describe

        top5 = f"  top-5 {result['top5']:.4f}" if "top5" in result else ""
        name = f"linear ({describe(result['preset'], result['overrides'])})" if "preset" in result else args.protocol
        print(f"{name} on {result['tap']} ({result['feature_dim']} dims): top-1 {result['top1']:.4f}{top5}")
    return 0


def _taps(value: str | None) -> tuple[str, ...] | None:
    """--taps conv1,res2,...: the taps in order ("all": every tap of the backbone, None)."""
    if value is None:
        return None
    taps = tuple(t.strip() for t in value.split(",") if t.strip())
    if not taps:
        raise SelfSupError(f"--taps {value!r}: name taps separated by commas, e.g. conv1,res2,res3,res4,res5, or all")
    return taps


def _cell(value: str) -> tuple[int, int]:
    try:
        row, col = (int(v) for v in value.split(","))
    except ValueError:
        raise SelfSupError(f"--query {value!r}: give the window's grid cell as ROW,COL, e.g. 2,2") from None
    return row, col


def _viz(args) -> int:
    from selfsup.report.viz import visualise

    try:
        counts = tuple(int(c) for c in args.counts.split(","))
    except ValueError:
        raise SelfSupError(f"--counts {args.counts!r}: give numbers of patches separated by commas, e.g. 1,2,4,8,16") from None
    print(visualise(args.kind, args.checkpoint, args.data, args.out, index=args.index,
                    query=_cell(args.query) if args.query else None,
                    patch_size=_patch_size(args.patch_size), stride=args.stride, k=args.k,
                    patches_per_image=args.patches_per_image, max_images=args.max_images,
                    counts=counts, image_size=args.image_size,
                    device=args.device, clusters=args.clusters))
    return 0


def _demo(args) -> int:
    from selfsup.demo import run_demo

    results = run_demo(out=args.out, data=args.data, epochs=args.epochs, device=args.device,
                       methods=None if args.methods is None else args.methods.split(","))
    return 130 if results is None else 0             # interrupted: as `selfsup pretrain`


def build_parser() -> argparse.ArgumentParser:
    from selfsup.methods import METHODS
    from selfsup.models import BACKBONES

    from selfsup import __version__

    parser = argparse.ArgumentParser(prog="selfsup", description="Self-supervised visual representation learning and its evaluation.")
    parser.add_argument("--version", action="version", version=f"selfsup {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("pretrain", help="learn a backbone without labels",
                       description="Pretrain a backbone with a self-supervised method. Settings resolve, lowest first: "
                                   "the method's paper defaults, --config FILE, flags, then key=value overrides "
                                   "(e.g. optim.lr=0.5 simclr.temperature=0.2).")
    p.add_argument("method", help=f"one of: {', '.join(METHODS)}")
    p.add_argument("--data", help="dataset SPEC: [FORMAT:]PATH[?options], e.g. cifar10:DIR or DIR.tar?val_per_class=500&part=train")
    p.add_argument("--backbone", help=f"one of: {', '.join(BACKBONES)}, or timm:NAME for any installed timm model "
                                      "(default resnet18)")
    p.add_argument("--epochs", type=int, help="epochs (0 saves the initial weights)")
    p.add_argument("--batch-size", type=int, help="global batch size")
    p.add_argument("--out", help="run directory (default runs/latest)")
    p.add_argument("--config", help="YAML file of settings, or the name of a shipped config (e.g. swav_cifar10, "
                                    "jigclu_imagenet: the files in selfsup/configs)")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved settings as YAML (every key with its meaning and default) and exit")
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    p.add_argument("--resume-with-changes", action="store_true",
                   help="continue the run in --out with settings that differ from its own (recorded in metrics.jsonl)")
    p.add_argument("--device", help="auto, cpu or cuda")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="any config key, e.g. optim.lr=0.1")
    p.set_defaults(func=_pretrain)

    from selfsup.finetune import RECIPES

    p = sub.add_parser("finetune", help="fine-tune a checkpoint's backbone with labels (semi-supervised, transfer)",
                       description="Train the supervised method (a linear head, cross-entropy) with the backbone "
                                   "initialised from --init, then score backbone and head on --test-data (top-1, "
                                   "top-5). Semi-supervised: --data 'SPEC?fraction=0.01' (or 0.1). Rerunning the "
                                   "command resumes the run in --out.")
    p.add_argument("--init", required=True, help="a .pt file from `selfsup pretrain`, or a torchvision ResNet state dict")
    p.add_argument("--data", required=True, help="labelled training SPEC, e.g. DIR.tar?val_per_class=500&part=train&fraction=0.1")
    p.add_argument("--test-data", required=True, help="labelled SPEC to score")
    p.add_argument("--recipe", default="swav-10pct", choices=list(RECIPES),
                   help="learning rates and schedule: SwAV's or JigClu's semi-supervised recipe (default swav-10pct)")
    p.add_argument("--epochs", type=int, help="epochs (default: the recipe's, 20 or 100)")
    p.add_argument("--batch-size", type=int, help="global batch size (default 256)")
    p.add_argument("--out", help="run directory (default runs/latest)")
    p.add_argument("--device", help="auto, cpu or cuda")
    p.add_argument("--resume-with-changes", action="store_true",
                   help="continue the run in --out with settings that differ from its own (e.g. more --epochs)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object on the last line")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="any config key, e.g. optim.head_lr=1.0")
    p.set_defaults(func=_finetune)

    p = sub.add_parser("transfer", help="knowledge transfer by clustering (CC+): a teacher's k-means pseudo-labels "
                                        "train a student of any architecture",
                       description="Cluster the teacher's features of --cluster-data (k-means, --clusters), label "
                                   "every image of --label-data with its nearest centroid (OUT/pseudo_labels.npz), "
                                   "then train --student from scratch to classify them (OUT/student; the supervised "
                                   "method). The student evaluates like any checkpoint.")
    p.add_argument("--teacher", required=True, help="a checkpoint, random:BACKBONE (a randomly initialised network), or "
                                                   "hog[:WORDS] (HOG bag-of-words histograms, 1000 words by default)")
    p.add_argument("--student", required=True, help=f"student backbone: one of {', '.join(BACKBONES)}, or timm:NAME")
    p.add_argument("--cluster-data", required=True, help="dataset SPEC whose teacher features are clustered")
    p.add_argument("--label-data", help="dataset SPEC to label and train the student on (default: --cluster-data)")
    p.add_argument("--clusters", type=int, default=2000, help="k of k-means (default 2000, the paper's)")
    p.add_argument("--tap", help="teacher tap (default: its evaluation tap, conv4-style)")
    p.add_argument("--pool", default="max", help="teacher feature pooling (default max: about 9.6k dims, the paper's)")
    p.add_argument("--iterations", type=int, default=20, help="k-means iterations (default 20)")
    p.add_argument("--epochs", type=int, help="student epochs")
    p.add_argument("--batch-size", type=int, help="student batch size")
    p.add_argument("--out", help="output directory (default runs/transfer)")
    p.add_argument("--device", help="auto, cpu or cuda")
    p.add_argument("--seed", type=int, default=0, help="seed of k-means, the random teacher and the student")
    p.add_argument("--objective", default="classify", choices=["classify", "regress"],
                   help="classify: CC+ (the pseudo-labels); regress: the distillation baseline, the student "
                        "regresses the teacher's pooled features (default classify)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="student settings, e.g. optim.lr=0.02")
    p.set_defaults(func=_transfer)

    p = sub.add_parser("sweep", help="a grid of pretraining runs, evaluated, tabulated and plotted (Goyal et al. 2019)",
                       description="Run every cell of the grid in FILE.yaml (pretraining, then the evaluations it "
                                   "lists), resumably, then write results.csv, results.md and log-x plots of each "
                                   "metric against the plot axis. The shipped sweeps are in selfsup/configs/sweeps/.")
    p.add_argument("file", help="sweep file (name, base, grid, evals, plot), or the name of a shipped one, e.g. "
                                "goyal_capacity_cifar10")
    p.add_argument("--parallel", type=int, default=1, help="cells run at once (processes sharing the cores; default 1)")
    p.add_argument("--out", help="sweep directory (default: the file's out, else runs/sweeps/NAME)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="settings of every cell over the file's base, e.g. epochs=1; data=PATH moves the data: the "
                        "base's spec and the evals' specs on its path get PATH, each keeping its options "
                        "(selfsup sweep goyal_capacity_cifar10 data=/path/to/cifar10-train-jpg.tar)")
    p.set_defaults(func=_sweep)

    p = sub.add_parser("eval", help="evaluate a checkpoint's frozen backbone",
                       description="Evaluate the frozen backbone of a checkpoint on labelled data.")
    p.add_argument("protocol", choices=["knn", "linear", "patches", "svm", "lowshot", "cluster"],
                   help="knn: weighted cosine kNN; linear: linear probe on cached features; patches: kNN and linear "
                        "probe on aggregated patch embeddings (BagSSL); svm: VOC07 linear SVMs per tap; lowshot: "
                        "low-shot SVMs (Goyal et al. 2019); cluster: k-means on the --test-data features against "
                        "its labels (NMI, ARI, Hungarian accuracy)")
    p.add_argument("--checkpoint", required=True, help="a .pt file from `selfsup pretrain` (or a torchvision ResNet state dict)")
    p.add_argument("--train-data", help="labelled dataset SPEC to fit on (every protocol but cluster)")
    p.add_argument("--test-data", required=True, help="labelled dataset SPEC to score")
    p.add_argument("--tap", help="feature tap, e.g. res3 or pool5 (default: the method's evaluation tap, recorded in the checkpoint; else the last stage)")
    p.add_argument("--pool", help="avg: global average pool; 9k: adaptive pool to about 9k dims; "
                                                 "goyal: Goyal et al.'s fixed windows, about 9k dims; max: max-pooled "
                                                 "to about 9.6k dims, CC+'s teacher features (default avg)")
    p.add_argument("--image-size", type=int, help="evaluation size (default: the pretraining size)")
    p.add_argument("--k", type=int, default=20, help="kNN neighbours (default 20)")
    p.add_argument("--temperature", type=float, default=0.07, help="kNN temperature (default 0.07)")
    p.add_argument("--preset", help="linear probe protocol: fast (cached features, default), moco (MoCo / JigClu: "
                                    "lr 10, steps at 60 and 80), swav (lr 0.3, cosine), or goyal (Goyal et al. "
                                    "2019's layer-wise heads, one per tap: Nesterov lr 0.01, 14 epochs); moco, swav "
                                    "and goyal train on RandomResizedCrop + flip views")
    p.add_argument("--taps", help="eval linear: layer-wise probes (preset goyal) on these taps, e.g. "
                                  "conv1,res2,res3,res4,res5, or all (every tap; the default of --preset goyal)")
    p.add_argument("--cached", action="store_true", help="eval linear --preset goyal: train the heads on cached "
                                                        "centre-view features instead of augmented views (faster)")
    p.add_argument("--probe-epochs", type=int, help="linear probe epochs (default: the preset's, 100)")
    p.add_argument("--lr", type=float, help="linear probe learning rate (default: the preset's; fast 0.1)")
    p.add_argument("--batch-size", type=int, default=256, help="feature extraction batch")
    p.add_argument("--device", default="cpu", help="auto, cpu or cuda (default cpu)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the feature cache")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object on the last line")
    g = p.add_argument_group("svm, lowshot", "options of `selfsup eval svm` and `selfsup eval lowshot` (Goyal et al. "
                             "2019, METHODS.md 6.1, 6.3; --taps: default every stage for svm, the last two for lowshot)")
    g.add_argument("--costs", default="goyal", help="SVM costs: goyal (fssb's 26), vissl (VISSL's 11) or a comma list")
    g.add_argument("--jobs", type=int, default=-1, help="SVM worker processes (default -1: every core)")
    g.add_argument("--solver", default="sklearn", choices=["sklearn", "torch"],
                   help="svm: sklearn's LinearSVC (default, the reference) or the batched Newton solver in torch (GPU)")
    g.add_argument("--shots", default="1,2,4,8,16,32,64,96", help="lowshot: k values (default 1,2,4,8,16,32,64,96)")
    g.add_argument("--samples", type=int, default=5, help="lowshot: independent samples per k (default 5)")
    g = p.add_argument_group("cluster", "options of `selfsup eval cluster` (k-means on --test-data; --train-data "
                             "is not used and may be omitted)")
    g.add_argument("--clusters", type=int, help="k-means centroids (default: the number of classes)")
    g.add_argument("--iterations", type=int, default=20, help="Lloyd iterations (default 20)")
    g.add_argument("--spherical", action="store_true", help="spherical k-means on L2-normalised features")
    g.add_argument("--pca", type=int, help="PCA-whiten to this many dimensions first (DeepCluster)")
    g = p.add_argument_group("patches", "options of `selfsup eval patches`")
    g.add_argument("--num-patches", type=int, default=16, help="patches averaged per image (global aggregation, default 16)")
    g.add_argument("--patch-size", default="auto", help="patch side in image pixels, multi (RandomResizedCrop(0.08, 1)) "
                                                        "or auto: the checkpoint's pretraining patch side (default)")
    g.add_argument("--aggregate", default="global", choices=["global", "local"],
                   help="global: mean of random patches; local: sliding window, AvgPool2d(3, 2) of the grid")
    g.add_argument("--window", type=int, help="local window side (default half the image side)")
    g.add_argument("--stride", type=int, help="local window stride (default window / 4)")
    g.add_argument("--probe", default="knn,linear", help="probes to run on the aggregated features (default knn,linear)")
    g.add_argument("--chunk", type=int, default=2048, help="patches embedded at once (bounds memory, default 2048)")
    g.add_argument("--seed", type=int, help="seed of the linear probe (its head, batches and views), the patch positions "
                                           "(patches), k-means (cluster) and the draws (lowshot); default 0")
    p.set_defaults(func=_eval)

    p = sub.add_parser("viz", help="visualise what a backbone learned (BagSSL Fig. 3a, 4, 5; colourisations)",
                       description="heatmap: cosine similarity of a query patch to every patch of its image, in the "
                                   "embedding and projection spaces; patch-knn: the nearest patches of a query patch "
                                   "across a dataset; convergence: cos(mean of N patch embeddings, whole-image "
                                   "embedding) against N; colorize: a colorization checkpoint's annealed-mean "
                                   "colourisation of --max-images images from --index, under their grayscale input "
                                   "and above the ground truth.")
    p.add_argument("kind", choices=["heatmap", "patch-knn", "convergence", "colorize", "filters", "clusters"])
    p.add_argument("--checkpoint", required=True, help="a .pt file from `selfsup pretrain` (or a torchvision ResNet state dict)")
    p.add_argument("--data", help="dataset SPEC (every kind but filters)")
    p.add_argument("--clusters", type=int, default=100, help="clusters: k-means centroids (default 100); 8 are shown "
                                                            "with their --k nearest images")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--index", type=int, default=0, help="image of the query patch (heatmap, patch-knn); first image (colorize)")
    p.add_argument("--query", help="query window as ROW,COL in the grid of windows (default the centre)")
    p.add_argument("--patch-size", default="auto", help="patch side in pixels (default: the pretraining side, else half the image)")
    p.add_argument("--stride", type=int, help="window stride of the grid (default patch side / 4, at least 1)")
    p.add_argument("--k", type=int, default=16, help="patch-knn: patches shown (default 16)")
    p.add_argument("--patches-per-image", type=int, default=16, help="patch-knn: random patches searched per image")
    p.add_argument("--max-images", type=int, help="images searched / averaged (default all; convergence 256); "
                                                  "colorize: images shown (default 8)")
    p.add_argument("--counts", default="1,2,4,8,16", help="convergence: numbers of patches averaged")
    p.add_argument("--image-size", type=int, help="network input size (default: the pretraining size)")
    p.add_argument("--device", default="cpu", help="auto, cpu or cuda (default cpu)")
    p.set_defaults(func=_viz)

    from selfsup.export import add_parser as add_export

    add_export(sub)

    p = sub.add_parser("bench", help="the training-step throughput of every method against the supervised step",
                       description="Train each method for a few steps through the engine, with its defaults, on "
                                   "in-memory synthetic images (views drawn on the fly, no decoding), and print a "
                                   "table of images/s and the step against the supervised step.")
    p.add_argument("--methods", default="all", help="comma list of methods (default all 13; supervised always)")
    p.add_argument("--backbone", default="convnet", help="backbone (default convnet)")
    p.add_argument("--batch-size", type=int, default=256, help="batch size (default 256)")
    p.add_argument("--image-size", type=int, default=32, help="image size in pixels (default 32)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per method (default 5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed first steps (default 2)")
    p.add_argument("--device", default="cpu", help="auto, cpu or cuda (default cpu)")
    p.add_argument("--profile", action="store_true",
                   help="split each method's step into data, forward and loss (backbone share), backward, optimizer "
                        "and logging, in ms per step")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="settings for every method, e.g. cifar_stem=false")
    p.set_defaults(func=_bench)

    p = sub.add_parser("demo", help="the whole pipeline on Fashion-MNIST in minutes on a CPU",
                       description="Pretrain a small convnet with SimCLR, JigClu and SwAV on Fashion-MNIST, score "
                                   "them against random weights with kNN, the linear probe, linear SVMs and the "
                                   "low-shot curve, and write report.md with pictures (about 10 minutes on 2 CPU "
                                   "cores).")
    p.add_argument("--out", default="runs/demo", help="run directory (default runs/demo)")
    p.add_argument("--data", default=None, help="Fashion-MNIST folder (default: Debian's /usr/share/datasets/fashion-mnist)")
    p.add_argument("--epochs", type=int, help="pretraining epochs of every method (default: each method's demo budget)")
    p.add_argument("--methods", help="comma list among simclr, jigclu, swav (default: all three)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    warnings.formatwarning = lambda msg, cat, *a, **k: f"selfsup: warning: {msg}\n"
    from selfsup.malloc import keep_freed_memory

    keep_freed_memory()                 # CPU steps reuse freed tensors instead of page-faulting them in again
    try:
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
        # key=value overrides may come anywhere after the method, between flags too
        if args.command in ("pretrain", "finetune", "transfer", "bench", "sweep") and all(not e.startswith("-") for e in extra):
            args.overrides = list(args.overrides) + extra
        elif extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        from selfsup.progress import mode

        mode()                          # a bad SELFSUP_PROGRESS is refused before any command writes anything
        return args.func(args)
    except SelfSupError as exc:
        print(f"selfsup: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("selfsup: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
