"""Knowledge transfer by clustering, CC+ (Noroozi, Vinjimoor, Favaro, Pirsiavash, CVPR 2018, §3; METHODS.md 4).

The knowledge of a teacher of any architecture goes to a student of any other through pseudo-labels:

1. features of the clustering set through the teacher at a conv4-style tap, max-pooled to about
   9.6k dimensions (``pool="max"``: AlexNet's 13 x 13 x 384 conv4 becomes 5 x 5 x 384);
2. Euclidean k-means on them, k = 2000 (``selfsup.kmeans``: faiss Lloyd, 20 iterations, random seeds);
3. every image of the labelling set (by default the clustering set; Table 2 uses another) gets the
   index of its nearest centroid: ``pseudo_labels.npz``, which records the teacher and the images;
4. the student is trained from scratch to classify the pseudo-labels (the ``supervised`` method on
   ``LABEL_SPEC?labels=pseudo_labels.npz``), and evaluates like any backbone.

Teachers: a checkpoint (``selfsup pretrain``, or a torchvision ResNet state dict), ``random:BACKBONE``,
a randomly initialised network (the paper's control, which transfers like random initialisation), or
``hog`` / ``hog:WORDS``, HOG bag-of-words histograms (``selfsup.cluster.hog``, the paper's HOG row).
The student's recipe is [A] (the paper says "standard AlexNet ImageNet settings"): SGD momentum 0.9,
lr 0.01 per 256 images, weight decay 5e-4, cosine; for a random teacher the paper lowers the lr to
0.001 for the student to converge, and so does ``transfer``.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from selfsup.checkpoint import load_backbone, load_checkpoint, write_text_atomic
from selfsup.data.datasets import load_dataset, read_label_file, write_label_file
from selfsup import distributed as dist
from selfsup.distributed import resolve_device
from selfsup.errors import SelfSupError
from selfsup.eval.checks import at_least_one, eval_image_size
from selfsup.eval.features import extract_features, file_hash
from selfsup.kmeans import assign, kmeans

RANDOM = "random:"
HOG = "hog:"


def teacher_backbone(teacher: str, seed: int = 0, image_size: int | None = None):
    """(backbone, its identity, its evaluation tap, its pretraining view size) of a teacher:
    a checkpoint file, or ``random:BACKBONE`` (seeded initial weights; the CIFAR stem on a ResNet for
    images of 64 px or less, as the engine would choose)."""
    from selfsup.models import build_backbone
    from selfsup.models.backbones import auto_cifar_stem

    if teacher.startswith(RANDOM):
        name = teacher[len(RANDOM):]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            backbone = build_backbone(name, cifar_stem=auto_cifar_stem(name, image_size or 224)).eval()
        return backbone, f"{teacher}@seed{seed}", backbone.default_tap, None
    ckpt = load_checkpoint(teacher)
    backbone = load_backbone(teacher, ckpt)
    size = eval_image_size(ckpt)
    return backbone, f"{Path(teacher).name}@{file_hash(teacher)}", ckpt.get("eval_tap") or backbone.default_tap, size


def hog_words(teacher: str) -> int | None:
    """The codebook size of a ``hog`` / ``hog:WORDS`` teacher (``hog``: 1000), None for other teachers;
    anything but a whole number of at least 1 is refused."""
    if teacher == "hog":
        return 1000
    if not teacher.startswith(HOG):
        return None
    words = teacher[len(HOG):]
    if not (words.isdigit() and int(words) >= 1):
        raise SelfSupError(f"--teacher {teacher}: the HOG codebook needs a whole number of words of at least 1, "
                           f"e.g. --teacher hog:1000")
    return int(words)


def pseudo_labels(teacher: str, cluster_spec: str, out_file: str | Path, label_spec: str | None = None,
                  clusters: int = 2000, tap: str | None = None, pool: str = "max", iterations: int = 20,
                  seed: int = 0, image_size: int | None = None, device: str = "cpu", batch_size: int = 256,
                  progress: bool = False, check=None) -> dict:
    """Cluster the teacher's features of ``cluster_spec`` and write the nearest-centroid index of every
    image of ``label_spec`` (default: ``cluster_spec``) to ``out_file``. A file already there is reused
    when the same teacher and setting made it (the labelling set included), and refused otherwise.
    ``check(key)``, when given, sees the teacher-and-setting key first, before anything is computed or
    written (``transfer``: the record of the student trained on ``out_file``)."""
    label_spec = label_spec or cluster_spec
    device = resolve_device(device)
    at_least_one("--clusters", clusters, 2000)
    if iterations < 0:
        raise SelfSupError(f"--iterations must be at least 0, got {iterations}: use e.g. --iterations 20")
    words = hog_words(teacher)
    cluster_set, label_set = load_dataset(cluster_spec), load_dataset(label_spec)
    if clusters > len(cluster_set):
        raise SelfSupError(f"--clusters {clusters} is more than the {len(cluster_set)} images of {cluster_spec}: "
                           f"lower it")
    if words is not None:
        backbone, identity, default_tap, size, pool = None, f"{teacher}@seed{seed}", "bag-of-words", None, "histogram"
    else:
        backbone, identity, default_tap, size = teacher_backbone(teacher, seed, image_size or cluster_set.image_size)
    tap = tap or default_tap
    made_by = f"{identity}|{tap}|{pool}|k{clusters}|it{iterations}|seed{seed}|{cluster_set.fingerprint}"
    if label_set.fingerprint != cluster_set.fingerprint:          # Table 2: the labels of another set
        made_by += f"|labels {label_set.fingerprint}"
    if check is not None:
        check(made_by)
    out_file = Path(out_file)
    if out_file.exists():
        f = read_label_file(out_file)
        if f["teacher"] != made_by or str(f["data_fingerprint"]) != label_set.fingerprint:
            raise SelfSupError(f"{out_file} holds pseudo-labels of another teacher or setting ({f['teacher']}), "
                               f"not {made_by}: delete it, or pick another --out")
        return {"file": str(out_file), "teacher": made_by, "reused": True, "clusters": int(f["num_classes"])}
    if backbone is None:                      # HOG bag of words: a codebook from the clustering set
        from selfsup.cluster.hog import hog_bow_features, hog_codebook

        codebook = hog_codebook(cluster_set, words, seed=seed)
        features = lambda d: hog_bow_features(d, codebook)      # noqa: E731
    else:
        size = image_size or size
        cache = None if teacher.startswith(RANDOM) else file_hash(teacher)
        common = dict(tap=tap, pool=pool, image_size=size, batch_size=batch_size, device=device, cache_key=cache,
                      progress=progress)
        features = lambda d: extract_features(backbone, d, **common)[0]      # noqa: E731
    x = features(cluster_set)
    t = time.perf_counter()
    centroids, labels = kmeans(x.float(), clusters, iterations, seed=seed)
    seconds = time.perf_counter() - t
    if label_spec != cluster_spec:
        labels = assign(features(label_set).float(), centroids)
    labels = labels.cpu().numpy()
    out_file.parent.mkdir(parents=True, exist_ok=True)
    write_label_file(out_file, labels, label_set, made_by, clusters)
    used = int((np.bincount(labels, minlength=clusters) > 0).sum())
    return {"file": str(out_file), "teacher": made_by, "reused": False, "clusters": clusters, "clusters_used": used,
            "feature_dim": int(x.shape[1]), "kmeans_s": round(seconds, 2), "n_cluster": len(x), "n_label": len(labels)}


def check_student(cfg, student_out: Path, objective: str) -> None:
    """Refuse, before any pseudo-labels are made, a student run in ``student_out`` that this command cannot
    continue: another method, backbone or (for CC+) labelling set, or other settings without
    ``resume_with_changes=true``. Paths are compared by what they name: the student's pseudo-labels under
    another spelling of ``--out`` (or the regressed teacher under another spelling) keep the run's spelling;
    in a moved or copied ``--out`` the student continues on the labels there (``trained_on.txt`` checks their
    content), the new path recorded as a change of the run."""
    from omegaconf import OmegaConf

    from selfsup.engine.rundir import config_changes, refuse_changes

    ckpt = load_checkpoint(student_out / "last.pt")
    changes = {k: v for k, v in config_changes(ckpt.get("config") or {}, OmegaConf.to_container(cfg)).items()
               if v[1] is not None}      # unset here, filled in by the run (num_classes): the trainer checks them
    moved = False
    if "distill.teacher" in changes and same_path(*changes["distill.teacher"]):
        cfg.distill.teacher = changes.pop("distill.teacher")[0]
    if objective == "classify" and "data" in changes:
        (spec, _, labels), (new_spec, _, new_labels) = (d.rpartition("labels=") for d in changes["data"])
        if spec == new_spec:             # the same labelling set, the labels at another path
            data = changes.pop("data")
            if same_path(labels, new_labels):
                cfg.data = data[0]
            else:
                moved = True
    fix = f"remove {student_out} or choose another --out"
    fixed = {"method", "backbone"} | ({"data"} if objective == "classify" else set())
    blocked = sorted(fixed & set(changes))
    if blocked:
        key, (old, new) = blocked[0], changes[blocked[0]]
        raise SelfSupError(f"the student in {student_out} has {key}={old}, this command {key}={new}: it cannot "
                           f"continue with another {key}: {fix}")
    refuse_changes(changes, cfg.resume_with_changes, f"the student in {student_out}",
                   f"rerun with the student's settings, add resume_with_changes=true to continue it with these, or {fix}")
    if moved:
        cfg.resume_with_changes = True   # the trainer allows and records the labels' new path (other changes: above)


def same_path(a: str, b: str) -> bool:
    """Whether two spellings name the same file (relative to the working directory, or absolute)."""
    return Path(a).resolve() == Path(b).resolve()


def trained_on(student_out: Path) -> str:
    """What the student in ``student_out`` was trained on, as ``record_trained_on`` wrote it."""
    record = student_out / "trained_on.txt"
    return record.read_text().strip() if record.exists() else f"something unrecorded ({record} is missing)"


def same_teacher(student_out: Path, labels_file: Path, made_by: str) -> None:
    """Refuse, before the teacher runs, pseudo-labels of another teacher or setting (``made_by``) for a student
    trained on others: the student depends on ``labels_file``, which is left as it is."""
    old = trained_on(student_out)
    if not old.endswith(f"({made_by})"):
        also = f" and {labels_file}, made for it," if labels_file.exists() else ""
        raise SelfSupError(f"the student in {student_out} was trained on {old}, this command gives it pseudo-labels "
                           f"of {made_by}: remove {student_out}{also} or choose another --out")


def record_trained_on(student_out: Path, source: str, resuming: bool) -> None:
    """``student_out/trained_on.txt`` names what the student learns from (the pseudo-labels' or the regressed
    teacher's content hash); a run is continued only on the same: a changed teacher, relabelled images, are
    refused in one line instead of pairing the student with labels it was not trained on. ``student_out``
    exists already (``transfer`` prepares it before the teacher runs)."""
    if resuming:
        old = trained_on(student_out)
        if old != source:
            raise SelfSupError(f"the student in {student_out} was trained on {old}, this command gives it {source}: "
                               f"remove {student_out} or choose another --out")
        return
    write_text_atomic(student_out / "trained_on.txt", source + "\n")


def _label_student(cfg, student_out: Path, labels_file: Path, objective: str, teacher: str, cluster_spec: str,
                   label_spec: str, clusters: int, tap, pool: str, iterations: int, seed: int, device) -> dict | None:
    """Under the student's run lock: check that a student being resumed can continue, make its pseudo-labels
    (classify) or check its teacher (regress), and record what it learns from (``trained_on.txt``)."""
    if cfg.resume:
        check_student(cfg, student_out, objective)
    if objective == "regress":
        load_checkpoint(teacher)              # a missing or broken teacher: its one-line error
        info, source = None, f"teacher {Path(teacher).name}@{file_hash(teacher)}"
    else:
        check = (lambda made_by: same_teacher(student_out, labels_file, made_by)) if cfg.resume else None
        info = pseudo_labels(teacher, cluster_spec, labels_file, label_spec, clusters, tap, pool, iterations,
                             seed, device=device or "cpu", progress=True, check=check)
        source = f"pseudo-labels {labels_file.name}@{file_hash(labels_file)} ({info['teacher']})"
    record_trained_on(student_out, source, cfg.resume)
    return info


def transfer(teacher: str, student: str, cluster_spec: str, label_spec: str | None = None, clusters: int = 2000,
             tap: str | None = None, pool: str = "max", iterations: int = 20, epochs: int | None = None,
             batch_size: int | None = None, out: str = "runs/transfer", device: str | None = None,
             overrides: list[str] | tuple[str, ...] = (), seed: int = 0, objective: str = "classify") -> dict:
    """CC+: pseudo-labels from ``teacher`` (``OUT/pseudo_labels.npz``), then the ``student`` backbone trained
    from scratch to classify them (``OUT/student``; rerunning resumes it, on the same pseudo-labels only).
    ``objective="regress"`` is the distillation baseline instead: the student regresses the teacher's features
    (the ``distill`` method; resumed with the same teacher's content only). The student's settings and an
    existing student run, and ``out`` (a folder that can be written), are checked before the teacher runs, and
    nothing is written in ``out`` but under the student's run lock: a second ``transfer`` to the same ``out``
    is refused while one runs. Under torchrun rank 0 makes the labels alone, under the lock, while the others
    wait; all then train the student. Returns what was done."""
    from selfsup.config import resolve_config
    from selfsup.engine.rundir import RunLock, prepare_out
    from selfsup.engine.trainer import pretrain
    from selfsup.methods import get_method
    from selfsup.models import build_backbone

    if objective not in ("classify", "regress"):
        raise SelfSupError(f"unknown --objective {objective!r}: use classify (CC+) or regress (distillation)")
    label_spec = label_spec or cluster_spec
    out = Path(out)
    student_out, labels_file = out / "student", out / "pseudo_labels.npz"
    recipe = ["optim.scale_lr=true", "optim.weight_decay=5e-4", "optim.momentum=0.9", "optim.warmup_epochs=0",
              f"seed={seed}"]
    if objective == "regress":
        if teacher.startswith(RANDOM) or teacher == "hog" or teacher.startswith(HOG):
            raise SelfSupError("--objective regress needs a network checkpoint as --teacher")
        method, data = "distill", label_spec
        recipe += ["optim.lr=0.01", f"distill.teacher={teacher}", f"distill.pool={pool}"] + (
            [f"distill.tap={tap}"] if tap else [])
    else:
        method = "supervised"
        data = label_spec + ("&" if "?" in label_spec else "?") + f"labels={labels_file}"
        recipe += [f"optim.lr={0.001 if teacher.startswith(RANDOM) else 0.01}"]
    flags = {"method": method, "data": data, "backbone": student, "epochs": epochs, "batch_size": batch_size,
             "out": str(student_out), "device": device}
    cfg = resolve_config(get_method(method), flags=flags, overrides=recipe + list(overrides),
                         image_size_of=lambda s: load_dataset(label_spec).image_size)   # the labels may not exist yet
    build_backbone(student)                   # an unknown student is refused before the teacher runs
    for folder in (out, student_out):         # an --out that is a file, or not writable: refused before it too
        prepare_out(folder)
    # under torchrun one process (rank 0) takes the student's run lock before anything is written (the labels and
    # trained_on.txt belong to the student), makes the labels and records them; the others wait for it, and all
    # then train the student, rank 0 still holding the lock
    dist.init_from_env("cuda" if (device or "cpu") in ("cuda", "auto") and torch.cuda.is_available() else "cpu")
    cfg.resume = (student_out / "last.pt").exists()
    lock, error, info = None, None, None
    if dist.is_main():
        try:
            lock = RunLock(student_out).acquire()
            with dist.alone():                # k-means and extraction on this process only: the others wait
                info = _label_student(cfg, student_out, labels_file, objective, teacher, cluster_spec, label_spec,
                                      clusters, tap, pool, iterations, seed, device)
        except SelfSupError as exc:
            error = exc
    dist.wait_for_all()                       # labelling a large set may take longer than the group's timeout
    (failed,) = dist.agree_any(error is not None)
    try:
        if failed:
            raise error or SelfSupError("rank 0 could not make the student's labels: see its message")
        run_dir, status = pretrain(cfg, held=lock)   # under the same lock: no moment unlocked since the labels
    finally:
        if lock is not None:
            lock.release()
    return {"protocol": "transfer", "objective": objective, "status": status, "pseudo_labels": info, "student": student,
            "student_lr": cfg.optim.lr, "checkpoint": str(run_dir / "last.pt")}
