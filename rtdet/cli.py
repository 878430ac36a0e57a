"""Command line: ``rtdet <verb> key=value ...`` (also ``python -m rtdet``).

Every ``key=value`` is a setting from ``rtdet/cfg/default.yaml`` (or a family's loss settings); values are
read as YAML scalars (``epochs=3``, ``amp=false``, ``lr0=1e-4``, ``name=``) and checked against the schema
before anything runs. A key that does not exist is an error naming the closest valid keys; a value out of
its type, range or choices is an error naming the key, the value and what is allowed.
"""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Callable

from rtdet.data import load_data_config
from rtdet.data.check import run_check
from rtdet.demo import run_demo
from rtdet.engine.benchmark import Benchmark
from rtdet.engine.compare import Compare
from rtdet.engine.errors import USER_ERRORS, Interrupted
from rtdet.engine.exporter import Exporter
from rtdet.engine.predictor import Predictor
from rtdet.engine.rundir import RunFolder
from rtdet.engine.settings import (
    DEFAULT_CFG,
    SettingsError,
    apply_cfg,
    check_settings,
    describe_settings,
    parse_value,
    resolve_settings,
    schema,
)
from rtdet.engine.setup import load_inference_model
from rtdet.engine.signals import terminate_raises
from rtdet.engine.tracker import Tracker
from rtdet.engine.trainer import Trainer
from rtdet.engine.tune import Tune
from rtdet.engine.validator import Validator
from rtdet.io.formats import formats
from rtdet.io.load import convert_file
from rtdet.io.transplant import transplant_file
from rtdet.utils.logging import LOGGER, set_verbosity

__all__ = ["entrypoint", "main", "parse_args", "CLIError"]

USAGE = f"""\
Usage: rtdet <verb> [key=value ...]

Verbs:
  info      build a model, print its layers and summary     rtdet info model=rtdetr-l.yaml imgsz=640
  train     train a model on a dataset                      rtdet train model=rtdetr-l.yaml data=coco128.yaml
  val       COCO mAP of a trained model on a val split      rtdet val model=best.pt data=coco128.yaml
  predict   detect objects in images, folders, videos       rtdet predict model=best.pt source=images/ conf=0.3
            streams, webcams, URLs, globs, .txt lists          rtdet predict model=best.pt source=rtsp://cam/live
  track     track objects in a video / stream (IDs, MOT)    rtdet track model=best.pt source=clip.mp4 tracker=bytetrack
  export    ONNX export, checked with ONNX Runtime          rtdet export model=best.pt dynamic=true
  benchmark params, GFLOPs, latency, memory, mAP            rtdet benchmark model=a.yaml,b.yaml formats=pytorch,onnx
  compare   train variants over seeds, test differences     rtdet compare models=a.yaml,b.yaml data=d.yaml seeds=3
  tune      search settings with Optuna (any executor)     rtdet tune model=a.yaml data=d.yaml space=s.yaml trials=20
  convert   a foreign checkpoint -> an rtdet checkpoint     rtdet convert source=rtdetr-l.pt [to=x.pt] [format=auto]
  transplant a checkpoint's weights -> a variant, by rows   rtdet transplant source=rtdetr-l.pt model=b.yaml to=b.pt
  demo      synthetic data -> train a small RT-DETR (or model=yolov9-demo.yaml) -> val -> predict, CPU, minutes
  data      dataset tools: `rtdet data check data=x.yaml` draws samples with boxes, reports label problems
  help      this message; `rtdet help settings` lists every setting, its default and what it accepts

Settings (every key, its default and a one-line description): {DEFAULT_CFG}
Examples:
  rtdet train model=rtdetr-l.yaml data=coco128.yaml epochs=3 imgsz=320 batch=4 device=cpu
  rtdet train resume=true
  rtdet predict model=best.pt source=bus.jpg save_txt=true
  rtdet export model=best.pt dynamic=true && rtdet val model=runs/export/export/best.onnx data=coco128.yaml
"""


class CLIError(ValueError):
    """A command line that cannot be run; the message says what to type instead."""


def parse_args(tokens: list[str], verb: str | None = None) -> dict:
    """``["epochs=3", "amp=false"]`` -> {"epochs": 3, "amp": False}, checking every key and value."""
    table = schema()
    out: dict = {}
    for tok in tokens:
        key, sep, value = tok.partition("=")
        key = key.strip().lstrip("-").replace("-", "_") if sep else key
        if not sep or not key:
            raise CLIError(
                f"'{tok}' is not a key=value argument{f' for {verb}' if verb else ''}. "
                f"Write settings as key=value, e.g. epochs=10 (see `rtdet help`)."
            )
        value = value.strip()
        # A key that only takes text (name, scale, a path) keeps what was typed: name=007 or name=on are
        # names, not the number 7 or YAML's boolean spelling 'on'.
        text_only = key in table and table[key].kinds == (str,) and value.lower() not in ("", "none")
        out[key] = value if text_only else parse_value(value)
    return apply_cfg(check_settings(out, verb), verb)  # cfg=file.yaml: its settings under the typed ones


# ---------------------------------------------------------------------------- verbs
def cmd_info(args: dict) -> None:
    names = _data_names(args.get("data"))
    nc = args.get("nc") if args.get("nc") is not None else (len(names) if names else None)
    model = load_inference_model(args.get("model") or _need("model", "info", "rtdetr-l.yaml"), nc=nc, names=names,
                                 scale=args.get("scale")).model
    model.info(imgsz=args.get("imgsz", 640))


def cmd_train(args: dict) -> None:
    if not args.get("model") and not args.get("resume"):
        _need("model", "train", "rtdetr-l.yaml")
    Trainer(args).train()


def cmd_val(args: dict) -> None:
    model = args.pop("model", None) or _need("model", "val", "runs/train/train/weights/best.pt")
    Validator(args)(model)


def cmd_predict(args: dict) -> None:
    model = args.pop("model", None) or _need("model", "predict", "runs/train/train/weights/best.pt")
    source = args.pop("source", None) or _need("source", "predict", "path/to/images/")
    n_images = n_boxes = 0
    for r in Predictor(args, model=model).stream(source):  # one picture at a time: long videos stay small
        n_images += 1
        n_boxes += len(r)
    print(f"{n_images} image(s) processed, {n_boxes} detections")


def cmd_track(args: dict) -> None:
    model = args.pop("model", None) or _need("model", "track", "runs/train/train/weights/best.pt")
    source = args.pop("source", None) or _need("source", "track", "clip.mp4")
    tracker = Tracker(args, model=model)
    n_frames, ids = 0, set()
    for r in tracker.stream(source):
        n_frames += 1
        ids.update(r.ids.tolist())
    print(f"{n_frames} frame(s) tracked, {len(ids)} track(s)")


def cmd_export(args: dict) -> None:
    model = args.pop("model", None) or _need("model", "export", "runs/train/train/weights/best.pt")
    Exporter(args)(model)


def cmd_benchmark(args: dict) -> None:
    if not (args.get("model") or args.get("models")):
        _need("model", "benchmark", "rtdetr-l.yaml,rtdetr-l-dysample.yaml")
    Benchmark(args)()


def cmd_tune(args: dict) -> None:
    Tune(args)()


def cmd_compare(args: dict) -> None:
    if not (args.get("model") or args.get("models")):
        _need("models", "compare", "rtdetr-l.yaml,rtdetr-l-dysample.yaml data=coco128.yaml")
    try:
        Compare(args)()
    except KeyboardInterrupt:
        print("rtdet compare: interrupted; run the same command again to resume (finished runs are kept)",
              file=sys.stderr)
        raise


CONVERT_KEYS = {"source": "the foreign checkpoint to convert (Ultralytics RT-DETR / YOLOv9, official YOLOv9, "
                          "mmdetection RTMDet, ConvNeXt V2, SHViT ...)",
                "to": "where to write the rtdet checkpoint (default: <source stem>-rtdet.pt beside it)",
                "format": "auto (recognise the file), or one of the formats listed by `rtdet convert help`",
                "verbose": "print the conversion report (default true)"}


def convert_usage() -> str:
    lines = ["Usage: rtdet convert source=<checkpoint> [to=<out.pt>] [format=auto]", "", "Keys:"]
    lines += [f"  {k:<8} {v}" for k, v in CONVERT_KEYS.items()]
    lines += ["", "Formats:"] + [f"  {f.name:<12} {f.description}" for f in formats().values()]
    lines += ["", "The output holds only tensors and plain types (torch.load(weights_only=True) reads it); train, "
              "val and predict take it as model=. See docs/checkpoints.md."]
    return "\n".join(lines)


def cmd_convert(tokens: list[str]) -> None:
    """``rtdet convert source=x.pt [to=y.pt] [format=auto]``: its own small set of keys."""
    args: dict = {}
    for tok in tokens:
        key, sep, value = tok.partition("=")
        key = key.strip().lstrip("-").replace("-", "_")
        if not sep or key not in CONVERT_KEYS:
            close = difflib.get_close_matches(key, list(CONVERT_KEYS), n=1)
            hint = f" Did you mean {close[0]}=?" if close else ""
            raise CLIError(f"'{tok}' is not a convert setting.{hint} Keys: {', '.join(CONVERT_KEYS)} "
                           f"(`rtdet convert help` lists them)")
        args[key] = value.strip()
    source = args.get("source") or _need("source", "convert", "rtdetr-l.pt")
    # The same strict boolean as every other verb's verbose= (verbose=maybe is an error, not true).
    set_verbosity(schema()["verbose"].check(parse_value(args.get("verbose", "true"))))
    out, loaded = convert_file(source, to=args.get("to") or None, format=args.get("format") or "auto")
    LOGGER.info(f"{source}: {loaded.description}, {'EMA' if loaded.ema else 'model'} weights")
    if loaded.report is not None:
        LOGGER.info(str(loaded.report))
    model = loaded.model
    kind = f"{model.nc} classes" if model.head_index is not None else "a backbone (no head)"
    LOGGER.info(f"wrote {out} (rtdet checkpoint: {model.name}, {kind})")
    if model.head_index is not None:
        LOGGER.info(f"  next: rtdet val model={out} data=...   rtdet train model={out} data=... (fine-tune)")
    else:
        LOGGER.info(f"  next: name it on the backbone row of a model YAML: [-1, 1, {model.yaml['backbone'][0][2]}, "
                    f"[weights={out}]]")


TRANSPLANT_KEYS = ("source", "model", "to", "nc", "data", "scale", "verbose")


def cmd_transplant(args: dict) -> None:
    """``rtdet transplant source=a.pt model=b.yaml [to=b.pt]``: b initialised from a by structure."""
    extra = [k for k in args if k not in TRANSPLANT_KEYS]
    if extra:
        raise CLIError(f"rtdet transplant does not take {', '.join(extra)}; its keys: {', '.join(TRANSPLANT_KEYS)}")
    example = "rtdetr-l.pt model=rtdetr-convnextv2-atto.yaml to=atto.pt"
    source = args.get("source") or _need("source", "transplant", example)
    if isinstance(source, list):
        raise CLIError(f"rtdet transplant takes one source= checkpoint, got a list {source}")
    model = args.get("model") or _need("model", "transplant", "rtdetr-convnextv2-atto.yaml source=rtdetr-l.pt")
    set_verbosity(bool(args.get("verbose", True)))
    names = _data_names(args.get("data"))
    out, report = transplant_file(source, model, args.get("to"), args.get("nc") or (len(names) if names else None),
                                  names, args.get("scale"))
    LOGGER.info(report.summary())
    LOGGER.info(f"wrote {out} (rtdet checkpoint; the per-row report is inside it under 'transplant')")
    LOGGER.info(f"  next: rtdet train model={out} data=...")


def cmd_demo(args: dict) -> None:
    run_demo(**args)


def cmd_data(args: dict, sub: str | None) -> int:
    if sub != "check":
        raise CLIError("usage: rtdet data check data=path/to/data.yaml [imgsz=640] [n_samples=16] [train_pipeline=...]")
    set_verbosity(bool(args.get("verbose", True)))
    data = args.get("data") or _need("data", "data check", "path/to/data.yaml")
    load_data_config(data)  # a missing or broken YAML fails here, before a run folder is made
    args = resolve_settings(args, verb="data")
    with RunFolder(args["project"], "data", args.get("name") or "check", bool(args["exist_ok"])) as folder:
        report = run_check(data, str(folder.path), int(args["imgsz"]), int(args["n_samples"]),
                           args.get("train_pipeline"))
    for issue in report["issues"]:
        LOGGER.warning(issue)
    n = report["n_problems"]
    LOGGER.info("data check: OK" if report["ok"] else f"data check: {n} problem{'s' if n != 1 else ''} found "
                f"(each listed above and in report.json)")
    for role, path in report["files"].items():
        LOGGER.info(f"  {role:<16} {path}")
    return 0 if report["ok"] else 1


# The verbs: a new one is a function of the checked settings (returning None for success, or an exit
# status) and a line here. Its errors are reported by main() like every other verb's.
VERBS: dict[str, Callable[[dict], int | None]] = {
    "info": cmd_info,
    "train": cmd_train,
    "val": cmd_val,
    "predict": cmd_predict,
    "track": cmd_track,
    "demo": cmd_demo,
    "export": cmd_export,
    "benchmark": cmd_benchmark,
    "compare": cmd_compare,
    "tune": cmd_tune,
    "transplant": cmd_transplant,
}


def _need(key: str, verb: str, example: str):
    raise CLIError(f"rtdet {verb} needs {key}=..., e.g. `rtdet {verb} {key}={example}`")


def _data_names(data) -> list[str] | None:
    if not data:
        return None
    return list(load_data_config(data).names)


def _report(verb: str, e: BaseException) -> None:
    """The error as ``rtdet <verb>: error: <message>`` lines on stderr, never a traceback."""
    message = str(e).strip() or type(e).__name__
    for line in message.splitlines():
        print(f"rtdet {verb}: error: {line}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit status (0 ok, 2 bad command line or setting, 1 a file it names is
    missing or invalid, or the run failed, 130 / 143 interrupted by SIGINT / SIGTERM, 141 output pipe closed). See
    :mod:`rtdet.engine.errors`. ``RTDET_TRACEBACK=1`` re-raises unexpected errors with their traceback."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("help", "-h", "--help"):
        if argv[1:2] == ["settings"]:
            print(describe_settings())
        else:
            print(USAGE)
        return 0
    with terminate_raises():  # SIGTERM cleans up (no empty run folder) and exits 143, as Ctrl-C exits 130
        return _run(argv[0], argv[1:])


def _run(verb: str, rest: list[str]) -> int:
    """One verb, its errors reported as :func:`main` describes."""
    try:
        if verb == "convert":
            if any(t in ("-h", "--help", "help") for t in rest):
                print(convert_usage())
                return 0
            cmd_convert(rest)
            return 0
        if verb == "data":
            sub = rest[0] if rest and "=" not in rest[0] else None
            return cmd_data(parse_args(rest[1:] if sub else rest, "data"), sub)
        if verb not in VERBS:
            close = difflib.get_close_matches(verb, [*VERBS, "convert", "data", "help"], n=2)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise CLIError(f"unknown verb '{verb}'.{hint} Verbs: {', '.join([*VERBS, 'convert', 'data', 'help'])}.")
        if any(t in ("-h", "--help", "help") for t in rest):
            print(USAGE)
            return 0
        return VERBS[verb](parse_args(rest, verb)) or 0  # a verb may return its own exit status
    except (CLIError, SettingsError) as e:
        _report(verb, e)
        return 2
    except BrokenPipeError:  # `rtdet ... | head` closed the pipe: stop quietly, as other command-line tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        return 141  # 128 + SIGPIPE, what a shell reports for a writer whose reader went away
    except Interrupted as e:
        print(f"rtdet {verb}: {e}", file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:
        print(f"rtdet {verb}: interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as e:  # bad file, bad YAML, bad checkpoint: the message says it all
        _report(verb, e)
        return 1
    except Exception as e:  # a bug: one line, and the traceback on request
        if os.environ.get("RTDET_TRACEBACK"):
            raise
        first = (str(e).strip().splitlines() or [""])[0]
        _report(verb, RuntimeError(f"unexpected {type(e).__name__}: {first} (a bug in rtdet: please report it; "
                                   f"RTDET_TRACEBACK=1 shows where)"))
        return 1


def entrypoint() -> None:
    """Console script ``rtdet``."""
    sys.exit(main())


if __name__ == "__main__":
    entrypoint()
