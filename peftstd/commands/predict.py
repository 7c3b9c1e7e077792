"""`peftstd predict`: run an exported artifact on some texts."""

from __future__ import annotations

import argparse

from peftstd.errors import UserError

HELP = "run an exported artifact on some texts"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("export_dir", help="export folder")
    parser.add_argument("texts", nargs="+", help="texts to classify or tag (question answering: the questions)")
    parser.add_argument("--context", help="question answering: the passage the questions are answered from")
    parser.add_argument("--artifact", help="artifact: fp32, int8, a kind (int8-static, gguf-q8_0) or a file "
                        "(default fp32; for a GGUF export Q8_0, else the next type that passed)")
    parser.add_argument("--runtime", choices=["onnxruntime", "openvino", "llama.cpp"],
                        help="engine (default: the export's own, onnxruntime, or llama.cpp for GGUF exports)")


def run(args: argparse.Namespace) -> int:
    from peftstd.runtime.folders import ExportFolder
    from peftstd.runtime.predictors import load_predictor

    artifact = args.artifact or ("auto" if ExportFolder(args.export_dir).runtime == "llama.cpp" else "fp32")
    predictor = load_predictor(args.export_dir, artifact, args.runtime)
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
