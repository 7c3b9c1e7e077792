"""The `peftstd` command: validate recipes, print the schema and the standard's defaults."""

from __future__ import annotations

import argparse
import json
import sys

from peftstd import __version__
from peftstd.errors import UserError, exit_on_user_error


def cmd_validate(args: argparse.Namespace) -> int:
    """A fine-tune recipe, or a pretraining config (recognised by its top-level `objective` key)."""
    from peftstd.config import load_config
    from peftstd.config.load import read_yaml
    from peftstd.config.pretrain import PretrainConfig

    if "objective" in read_yaml(args.config) or any(o.startswith("objective=") for o in args.overrides):
        cfg = load_config(args.config, args.overrides, schema=PretrainConfig)
        print(f"ok: {args.config} (schema {cfg.schema_version}, pretraining {cfg.objective}, method {cfg.method}, "
              f"learning rate {cfg.learning_rate():g})")
        return 0
    cfg = load_config(args.config, args.overrides)
    print(f"ok: {args.config} (schema {cfg.schema_version}, task {cfg.task.type}, method {cfg.method}, "
          f"learning rate {cfg.learning_rate():g})")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from peftstd.config import RecipeConfig
    from peftstd.config.pretrain import PretrainConfig

    print(json.dumps((PretrainConfig if args.pretrain else RecipeConfig).model_json_schema(), indent=2))
    return 0


def cmd_defaults(args: argparse.Namespace) -> int:
    from peftstd.config.docs import defaults_markdown
    from peftstd.export.profile import ExportProfile
    from peftstd.serve.config import ServeConfig

    sys.stdout.write(defaults_markdown((("Export profiles (`peftstd export --profile`, `export/*.yaml`)", ExportProfile),
                                        ("Serve settings (`peftstd serve --config`, each also a flag)", ServeConfig))))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from pathlib import Path

    from peftstd.run.check import check_path

    findings = check_path(Path(args.path))
    for finding in findings:
        mark = "ok  " if finding.ok else "FAIL"
        print(f"{mark} {finding.check}" + (f": {finding.detail}" if finding.detail else ""))
    failed = [f for f in findings if not f.ok]
    print(f"{len(findings) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


def cmd_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from peftstd.export.pipeline import export_run
    from peftstd.export.profile import load_profile

    overrides = {"int8": args.int8 or None, "fp16": args.fp16 or None, "prune": args.prune, "target": args.target,
                 "format": args.format, "budget": args.budget}
    profile = load_profile(args.profile, overrides)
    run = Path(args.run)
    return export_run(run, Path(args.out) if args.out else run / "export", profile)


def cmd_predict(args: argparse.Namespace) -> int:
    from peftstd.runtime.predictors import load_predictor

    predictor = load_predictor(args.export_dir, args.artifact, args.runtime)
    if predictor.task == "question-answering":
        if not args.context:
            raise UserError("this export answers questions: give the passage with --context \"...\"")
        inputs = [{"question": text, "context": args.context} for text in args.texts]
    elif args.context:
        raise UserError(f"--context applies to question-answering exports; this one is {predictor.task}")
    else:
        inputs = args.texts
    for text, row in zip(args.texts, predictor.predict(inputs)):
        print(f"{predicted_label(row)}\t{text}")
    return 0


def predicted_label(row: dict) -> str:
    """One line's worth of a predictor's result."""
    if "entities" in row:
        return "; ".join(f"{e['type']}: {e['text']}" for e in row["entities"]) or "(no entities)"
    if "answer" in row:
        return row["answer"] or "(no answer)"
    if "text" in row:
        return row["text"]
    return f"{row['label']}\t{row['score']:.4f}"


def cmd_bench(args: argparse.Namespace) -> int:
    from pathlib import Path

    from peftstd.bench.run import compare, run_bench

    if args.compare:
        for row in compare(Path(args.compare[0]), Path(args.compare[1])):
            print(f"{row['backend']:<28} batch {row['batch']:>3} seq {row['sequence']:>4}  "
                  f"p50 x{row['p50_ratio']:.2f}  throughput x{row['throughput_ratio']:.2f}")
        return 0
    if not args.target:
        raise UserError("peftstd bench needs a TARGET (run or export folder) or --compare A.json B.json")
    target = Path(args.target)
    run_bench(target, Path(args.out) if args.out else target / "bench", parse_ints(args.batches, "--batches"),
              parse_ints(args.sequences, "--sequences"), args.threads, args.repeats,
              set(args.backends.split(",")) if args.backends else None, args.device)
    return 0


def parse_ints(text: str, flag: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise UserError(f"{flag} takes comma-separated positive integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise UserError(f"{flag} takes comma-separated positive integers, got {text!r}")
    return values


def cmd_eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    from peftstd.basics.atomic import write_json, write_text
    from peftstd.evaluation.evaluate import compare_targets, evaluate_target, markdown, public, summary_line

    targets = [Path(args.target)] + ([Path(args.compare)] if args.compare else [])
    results = [evaluate_target(t, args.data, args.split, args.artifact if i == 0 else None, args.resamples, args.overrides)
               for i, t in enumerate(targets)]
    comparison = compare_targets(results[0], results[1], args.resamples) if args.compare else None
    out = Path(args.out) if args.out else targets[0] / "eval"
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "eval.json", {"results": [public(r) for r in results], "comparison": comparison})
    write_text(out / "eval.md", markdown(results, comparison))
    for r in results:
        print(summary_line(r))
    for m, c in (comparison or {}).items():
        print(f"difference in {m}: {c['difference']:+.4f} (95% CI {c['ci95'][0]:+.4f} to {c['ci95'][1]:+.4f}), paired bootstrap p={c['p_value']:.3f}")
    print(f"written: {out / 'eval.json'}, {out / 'eval.md'}")
    return 0


def cmd_ensemble(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    import numpy as np

    from peftstd.basics.atomic import write_json, write_text
    from peftstd.evaluation.ensemble import ensemble
    from peftstd.evaluation.evaluate import markdown, public, summary_line

    results, labels = ensemble([Path(m) for m in args.members], args.data, args.split, args.resamples)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    combined = results[-1]
    write_json(out / "ensemble.json", {"members": [str(Path(m).resolve()) for m in args.members], "combination": "mean probability",
                                       "labels": labels, **public(combined), "member_results": [public(r) for r in results[:-1]]})
    write_text(out / "eval.md", markdown(results, None))
    write_text(out / "predictions.jsonl", "".join(
        json.dumps({"prediction": labels[int(p)], "label": labels[int(t)], "probabilities": np.exp(row).round(6).tolist()}) + "\n"
        for p, t, row in zip(combined["_logits"].argmax(-1), combined["_labels"], combined["_logits"])))
    for r in results:
        print(summary_line(r))
    print(f"written: {out / 'ensemble.json'}, {out / 'eval.md'}")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from peftstd.evaluation.explain import explain_data, explain_entities, explain_text, print_explanation, write_html
    from peftstd.runtime.load import load_run

    if not args.texts and args.n is None:
        raise UserError("explain needs TEXTS, or --n N (with --data SPEC or the run's own --split) for an HTML report")
    if args.texts and args.n is not None:
        raise UserError("give either TEXTS or --n N, not both")
    if args.n is not None and args.n < 1:
        raise UserError(f"--n must be a positive number of examples, got {args.n}")
    from peftstd.runtime.folders import RunFolder

    run = Path(args.run)
    task = RunFolder(run).task
    if task not in ("text-classification", "token-classification"):
        raise UserError(f"explain covers text- and token-classification runs; this run is {task}")
    if args.n is not None and task != "text-classification":
        raise UserError(f"--n reports cover text-classification runs; for this {task} run give TEXTS")
    loaded = load_run(run)
    max_length = loaded.manifest["data"]["max_length"]
    explain_one = explain_entities if task == "token-classification" else explain_text
    if args.texts:
        results = [explain_one(loaded, text, args.steps, max_length) for text in args.texts]
        for result in results:
            print_explanation(result)
        sections, title = [("", results)], f"peftstd explain: {run.name}"
    else:
        from peftstd.evaluation.evaluate import evaluation_data

        data, source, _ = evaluation_data(run, args.data, args.split)
        sections, title = explain_data(loaded, data, args.n, args.steps, max_length), f"peftstd explain: {run.name} on {source}"
        results = [r for _, section in sections for r in section]
        print(", ".join(f"{heading.split(' (')[0].lower()}: {len(section)}" for heading, section in sections) + f" of {len(data.texts)} examples")
        args.html = args.html or str(run / "explain" / "report.html")
    if args.html:
        write_html(sections, Path(args.html), title)
        print(f"written: {args.html}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from peftstd.serve.config import load_serve_config
    from peftstd.serve.server import model_names, serve

    cfg = load_serve_config(args.config, args)
    return serve(cfg, model_names(args.exports))


def cmd_monitor(args: argparse.Namespace) -> int:
    from pathlib import Path

    from peftstd.basics.atomic import write_json
    from peftstd.evaluation.monitor import exit_code, monitor_export, print_report

    report = monitor_export(Path(args.export_dir), Path(args.data), args.column, args.artifact, args.runtime)
    print_report(report)
    if args.out:
        write_json(Path(args.out), report)
        print(f"written: {args.out}")
    return exit_code(report, args.fail_on)


def cmd_triton(args: argparse.Namespace) -> int:
    from pathlib import Path

    from peftstd.export.triton import write_repository
    from peftstd.runtime.folders import ExportFolder

    export = Path(args.export_dir)
    name = args.name or ExportFolder(export).name
    target = write_repository(export, Path(args.out), name, args.artifact, args.instances, args.max_batch_size, args.max_queue_delay_us)
    print(f"written: {target} (Triton model repository: tritonserver --model-repository {target.parent}); "
          f"tokenizer: {Path(args.out) / 'tokenizers' / name}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from pathlib import Path

    from peftstd.sweep.report import write_report
    from peftstd.sweep.run import run_sweep
    from peftstd.sweep.spec import load_sweep

    spec, base = load_sweep(args.sweep)  # every mistake in the sweep file, before any trial runs
    study = args.study or Path(args.sweep).stem
    folder = Path(args.out or Path("runs") / "sweeps" / study).absolute()
    folder.mkdir(parents=True, exist_ok=True)
    storage = args.storage or f"sqlite:///{folder / 'study.db'}"
    trials = args.trials or spec.trials
    from peftstd.sweep.trial import redacted

    print(f"peftstd sweep: study {study!r}, {trials} trials, {args.workers} worker(s), storage {redacted(storage)}, folder {folder}", flush=True)
    result = write_report(run_sweep(spec, base, folder, storage, study, trials, args.workers, args.threads), folder,
                          spec.objective.metric)
    best = result["best"]
    if best is None:
        print(f"no trial completed; see {folder / 'sweep.md'}")
        return 1
    print(f"best: trial {best.number}, {spec.objective.metric} {best.value:.4f}, {best.params}")
    print(f"written: {folder / 'sweep.md'}, {folder / 'best.yaml'}")
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    from pathlib import Path

    from peftstd.serve.keys import add_key, parse_scopes, read_keys, revoke_key

    path = Path(args.keys)
    if args.action == "add":
        key = add_key(path, args.name, parse_scopes(args.scopes))
        print(key)
        print(f"key {args.name!r} added to {path}; it is shown only now (the file keeps its sha256)", file=sys.stderr)
    elif args.action == "revoke":
        revoke_key(path, args.name)
        print(f"key {args.name!r} revoked")
    else:
        for key in read_keys(path):
            print(f"{key.name}\t{','.join(key.scopes)}\t{key.created}")
    return 0


def keys_parser() -> argparse.ArgumentParser:
    """`peftstd serve keys add|list|revoke`: the API keys of a key file."""
    parser = argparse.ArgumentParser(prog="peftstd serve keys", description="Manage the API keys of a key file (hashes only).")
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = sub.add_parser("add", help="create a key, print it once")
    add.add_argument("name", help="who the key is for (logged instead of the key)")
    add.add_argument("--scopes", default="infer,read", help="comma-separated: infer, read, metrics, admin (default %(default)s)")
    listing = sub.add_parser("list", help="names, scopes and dates of the keys")
    revoke = sub.add_parser("revoke", help="remove a key; a running server stops accepting it")
    revoke.add_argument("name")
    for command in (add, listing, revoke):
        command.add_argument("--keys", required=True, help="key file (YAML)")
    parser.set_defaults(func=cmd_keys)
    return parser


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="peftstd", description="A standard process for fine-tuning and shipping NLP transformers.")
    parser.add_argument("--version", action="version", version=f"peftstd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    validate = sub.add_parser("validate", help="check a fine-tune recipe or a pretraining config against its schema")
    validate.add_argument("config", help="recipe YAML")
    validate.add_argument("overrides", nargs="*", help="dotted overrides, e.g. lora.rank=8")
    validate.set_defaults(func=cmd_validate)

    schema = sub.add_parser("schema", help="print the JSON Schema of recipe configs (--pretrain: of pretraining configs)")
    schema.add_argument("--pretrain", action="store_true", help="the schema of recipes/pretrain.py configs")
    schema.set_defaults(func=cmd_schema)

    check = sub.add_parser("check", help="verify a run or export folder: files, sha256s, config or gate, loadable weights")
    check.add_argument("path", help="run directory or export folder")
    check.set_defaults(func=cmd_check)

    export = sub.add_parser("export", help="merge, prune, convert to ONNX, quantize, and verify a finished run")
    export.add_argument("run", help="finished run directory")
    export.add_argument("--profile", help="export profile YAML (see export/*.yaml); flags below override it")
    export.add_argument("--int8", action="store_true", help="also produce int8 artifacts")
    export.add_argument("--fp16", action="store_true", help="also produce an fp16 artifact (GPU targets)")
    export.add_argument("--prune", type=float, help="share of encoder FLOPs to remove by structured pruning (e.g. 0.4)")
    export.add_argument("--target", choices=["cpu", "gpu"], help="where the artifact will run (default cpu)")
    export.add_argument("--format", choices=["onnx", "tensorrt"], help="artifact format (default onnx)")
    export.add_argument("--budget", type=float, help="largest allowed metric drop in points (default 1.0)")
    export.add_argument("--out", help="export folder (default RUN/export)")
    export.set_defaults(func=cmd_export)

    predict = sub.add_parser("predict", help="run an exported artifact on some texts")
    predict.add_argument("export_dir", help="export folder")
    predict.add_argument("texts", nargs="+", help="texts to classify or tag (question answering: the questions)")
    predict.add_argument("--context", help="question answering: the passage the questions are answered from")
    predict.add_argument("--artifact", default="fp32", help="artifact: fp32, int8, a kind (int8-static) or a file (default %(default)s)")
    predict.add_argument("--runtime", default="onnxruntime", choices=["onnxruntime", "openvino"], help="engine (default %(default)s)")
    predict.set_defaults(func=cmd_predict)

    evaluate = sub.add_parser("eval", help="standard metrics with bootstrap intervals for a run or exported artifact")
    evaluate.add_argument("target", help="run directory or export folder")
    evaluate.add_argument("overrides", nargs="*", help="column mapping of --data as dotted data.* keys, e.g. data.text_column=sentence")
    evaluate.add_argument("--data", help="data source (registry name, file, hub id); default: the run's own data")
    evaluate.add_argument("--split", default="test", choices=["train", "validation", "test"], help="split of the run's data (default test)")
    evaluate.add_argument("--artifact", help="artifact file of an export folder (default model.onnx)")
    evaluate.add_argument("--compare", metavar="TARGET_B", help="a second run or export, compared by paired bootstrap")
    evaluate.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (default %(default)s)")
    evaluate.add_argument("--out", help="folder for eval.json and eval.md (default TARGET/eval)")
    evaluate.set_defaults(func=cmd_eval)

    ensemble = sub.add_parser("ensemble", help="average the probabilities of several runs or exports and evaluate the ensemble")
    ensemble.add_argument("members", nargs="+", help="run directories or export folders (at least 2)")
    ensemble.add_argument("--out", required=True, help="folder for ensemble.json, eval.md and predictions.jsonl")
    ensemble.add_argument("--data", help="data source (registry name, file, hub id); default: the members' own data")
    ensemble.add_argument("--split", default="test", choices=["train", "validation", "test"], help="split (default test)")
    ensemble.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (default %(default)s)")
    ensemble.set_defaults(func=cmd_ensemble)

    explain = sub.add_parser("explain", help="Integrated Gradients token attributions: per class, or per predicted entity (NER)")
    explain.add_argument("run", help="run directory")
    explain.add_argument("texts", nargs="*", help="texts to explain")
    explain.add_argument("--n", type=int, help="report on N examples of --data: the most confident wrong, most and least confident right")
    explain.add_argument("--data", help="data source for --n (registry name, file, hub id); default: the run's own data")
    explain.add_argument("--split", default="test", choices=["train", "validation", "test"], help="split for --n (default test)")
    explain.add_argument("--steps", type=int, default=64, help="integration steps (default %(default)s)")
    explain.add_argument("--html", help="write a self-contained HTML page here (with --n, default RUN/explain/report.html)")
    explain.add_argument("--json", help="write the attributions as JSON here")
    explain.set_defaults(func=cmd_explain)

    bench = sub.add_parser("bench", help="latency/throughput of every backend of a run or export, side by side")
    bench.add_argument("target", nargs="?", help="run directory or export folder")
    bench.add_argument("--batches", default="1,8,32", help="batch sizes (default %(default)s)")
    bench.add_argument("--sequences", default="32,128", help="sequence lengths (default %(default)s)")
    bench.add_argument("--threads", type=int, help="intra-op threads for every backend (default: torch's)")
    bench.add_argument("--repeats", type=int, default=20, help="timed rounds per grid cell (default %(default)s)")
    bench.add_argument("--backends", help="comma-separated subset, e.g. pytorch-fp32,onnxruntime-int8-dynamic")
    bench.add_argument("--device", default="cpu", help="device of the PyTorch backends: cpu or cuda (default %(default)s)")
    bench.add_argument("--out", help="results folder (default TARGET/bench)")
    bench.add_argument("--compare", nargs=2, metavar=("A.json", "B.json"), help="print B's ratios to A instead of running")
    bench.set_defaults(func=cmd_bench)

    from peftstd.serve.config import add_flags

    serve = sub.add_parser("serve", help="serve exports over HTTP: batched, authenticated, /v1 JSON and KServe V2 "
                                          "(`peftstd serve keys ...` manages API keys)")
    serve.add_argument("exports", nargs="+", metavar="EXPORT", help="export folder, or NAME=FOLDER")
    serve.add_argument("--config", help="serve settings YAML; the flags below override it")
    add_flags(serve)
    serve.set_defaults(func=cmd_serve)

    monitor = sub.add_parser("monitor", help="prediction drift (PSI, JS distance) of logged inputs against the export's "
                                              "held-out reference (monitor.json), as `serve` publishes it")
    monitor.add_argument("export_dir", metavar="EXPORT")
    monitor.add_argument("--data", required=True, help="request log of `serve --log-inputs`, a .jsonl/.csv/.tsv/.parquet "
                         "table, or a .txt file of one input per line")
    monitor.add_argument("--column", default="text", help="the table's input column (default text)")
    monitor.add_argument("--artifact", default="auto", help="artifact to run (default: the one `serve` picks)")
    monitor.add_argument("--runtime", default="onnxruntime", choices=["onnxruntime", "openvino"])
    monitor.add_argument("--out", help="write the figures as JSON here")
    monitor.add_argument("--fail-on", choices=["moderate", "major"], help="exit 3 when any feature drifts this much or more")
    monitor.set_defaults(func=cmd_monitor)

    triton = sub.add_parser("triton", help="write an export as a Triton Inference Server model repository")
    triton.add_argument("export_dir", metavar="EXPORT")
    triton.add_argument("--out", required=True, help="folder for model_repository/ and tokenizers/")
    triton.add_argument("--name", help="model name (default: the run's name)")
    triton.add_argument("--artifact", default="auto", help="int8-static or fp32 (default: the first that passed, in that order)")
    triton.add_argument("--instances", type=positive_int, default=1, help="model instances (instance_group count)")
    triton.add_argument("--max-batch-size", type=positive_int, default=32)
    triton.add_argument("--max-queue-delay-us", type=positive_int, default=500, help="dynamic batching's wait for more requests")
    triton.set_defaults(func=cmd_triton)

    sweep = sub.add_parser("sweep", help="hyperparameter search over recipe keys with Optuna; every trial a run directory")
    sweep.add_argument("sweep", metavar="SWEEP.yaml", help="base recipe, search space, objective (see recipes/sweeps/)")
    sweep.add_argument("--trials", type=positive_int, help="trials of the study in all (default: the sweep file's)")
    sweep.add_argument("--workers", type=positive_int, default=1, help="trials run at once by this process")
    sweep.add_argument("--storage", help="Optuna storage URL shared by every machine (postgresql://..., mysql://..., "
                       "or journal:PATH on a shared filesystem); default: SQLite in the sweep folder")
    sweep.add_argument("--study", help="study name (default: the sweep file's name); the same name continues a study")
    sweep.add_argument("--out", help="sweep folder (default runs/sweeps/STUDY)")
    sweep.add_argument("--threads", type=positive_int, help="CPU threads per trial (default: cores / workers)")
    sweep.set_defaults(func=cmd_sweep)

    defaults = sub.add_parser("defaults", help="print the standard's defaults table (Markdown)")
    defaults.set_defaults(func=cmd_defaults)
    return parser


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:2] == ["serve", "keys"]:
        args = keys_parser().parse_args(argv[2:])
        return args.func(args)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse takes a positional list only in one run, so `eval RUN --data F data.text_column=x` would leave the
    # overrides after an option unparsed: dotted key=value words anywhere join the command's overrides.
    stray = [word for word in extra if "=" in word and not word.startswith("-")]
    if stray and hasattr(args, "overrides"):
        args.overrides = [*args.overrides, *stray]
        extra = [word for word in extra if word not in stray]
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
