"""`peftstd predict`: run an exported artifact on some texts."""

from __future__ import annotations

import argparse

from peftstd.errors import UserError

HELP = "run an exported artifact on some texts"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("export_dir", help="export folder")
    parser.add_argument("texts", nargs="+", help="texts to classify or tag (question answering: the questions)")
    parser.add_argument("--context", help="question answering: the passage the questions are answered from")
    parser.add_argument("--artifact", default="auto", help="artifact: fp32, int8, a kind (int8-static, gguf-q8_0) or a file "
                        "(default auto: the one measured fastest on this machine, as `peftstd serve` picks; for a GGUF export "
                        "Q8_0, else the next type that passed)")
    parser.add_argument("--runtime", choices=["auto", "onnxruntime", "openvino", "llama.cpp"], default="auto",
                        help="engine (default auto: with --artifact auto the one measured fastest here, else onnxruntime; "
                        "llama.cpp for GGUF exports)")


def run(args: argparse.Namespace) -> int:
    from peftstd.runtime.choice import load_predictor

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
