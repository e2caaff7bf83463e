"""The Space: top-3 predictions of the ensemble (or of the student distilled from it) for an uploaded image, and
a decision-threshold optimizer.

    python app.py                                  # models/cifar10 (the shipped ensemble), or $VISION_ENSEMBLE_MANIFEST
    python app.py --manifest results/ensemble.json --port 7860
    python app.py --manifest owner/ensemble-repo   # a Hub repo holding ensemble.json

API endpoints (stable names for gradio_client): /classify, /explain, /inspect_csv, /optimize_threshold.
JSON API on the same server: POST /api/predict, GET /api/health, OpenAPI docs at /docs; Prometheus metrics at
/metrics.  The Classify tab and POST /api/predict share --slots predictions at once and --queue more waiting.
"""

from __future__ import annotations

if __name__ == "__main__":  # before the heavy imports: it may start this process again (serving/allocator.py)
    from vision_ensemble.serving.allocator import restart_with_objects_in_malloc

    restart_with_objects_in_malloc()

import argparse
import copy
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import gradio as gr
import matplotlib.pyplot as plt
import numpy as np
import torch
import uvicorn

from vision_ensemble.config import (ADMISSION_QUEUE, CLASSIFY_CONCURRENCY, DEFAULT_BOOTSTRAP_REPLICATES,
                                    DEFAULT_MANIFEST, DEFAULT_TOP_K, FORWARDED_ALLOW_IPS, KEEP_ALIVE_S, MAX_CSV_ROWS,
                                    MAX_UPLOAD_BYTES, TEMP_FILE_MAX_AGE_S, TEMP_SWEEP_EVERY_S, WAITING_PER_CLIENT)
from vision_ensemble.evaluation.conformal import set_sentence
from vision_ensemble.evaluation.ensemble import Ensemble
from vision_ensemble.evaluation.explain import explain_members
from vision_ensemble.evaluation.thresholds import (OBJECTIVES, ObjectiveParams, ThresholdError, comparison_rows,
                                                   curve_figures, detect_columns, optimize, read_table, results_table,
                                                   scored_labels_from_table)
from vision_ensemble.hub import (MODEL_CARD, HubError, answering_markdown, fill_results, resolve_manifest,
                                 results_markdown, split_front_matter)
from vision_ensemble.model import ModelError
from vision_ensemble.serving.allocator import fix_mmap_threshold, limit_malloc_arenas, trim_periodically
from vision_ensemble.serving.admission import Admission, Busy
from vision_ensemble.serving.api import AdmittedUploads, client_address, create_api, measured_top1
from vision_ensemble.serving.metrics import Metrics
from vision_ensemble.serving.predict import InputError, decode_upload, model_version, predict_image
from vision_ensemble.serving.tempfiles import sweep_temp_files

log = logging.getLogger("vision_ensemble.app")
HERE = Path(__file__).resolve().parent
EXAMPLES = HERE / "examples"
AUTO = "(auto)"
NO_MODELS = ("**No model weights are loaded.** By default the app serves `models/cifar10/`, the CIFAR-10 ensemble shipped "
             "in the repository (`bash train/cifar10_cpu.sh` trains and writes it again; `git checkout models/` restores "
             "it), or point it at another ensemble manifest: train members with `accelerate launch train/finetune.py`, "
             "write `ensemble.json` with `python evaluation/evaluate.py --models ... --output-dir results/`, then start "
             "`python app.py --manifest results/ensemble.json` (or set `VISION_ENSEMBLE_MANIFEST` to that path or to a "
             "Hub repo id holding `ensemble.json`). The threshold tab works without weights.")
NO_WEIGHTS = "No model weights are loaded; see the note on this tab for how to point the app at them."


# --- loading ---------------------------------------------------------------------------------------------

def load_ensemble(spec: str, runtime: str = "onnx") -> tuple[Ensemble | None, str, dict | None]:
    """(ensemble or None, a status line, the evaluation report beside the manifest if there is one)."""
    try:
        path = resolve_manifest(spec)
        start = time.perf_counter()
        ensemble = Ensemble.from_manifest(path)
        if runtime == "onnx":
            ensemble.use_onnxruntime(tempfile.mkdtemp(prefix="vision-ensemble-onnx-"))
    except (ModelError, HubError, OSError, ValueError) as exc:
        shipped = Path(spec).expanduser().resolve().is_relative_to(HERE / "models")
        restore = " `git checkout -- models/` restores the shipped ensemble." if shipped else ""
        log.warning("no ensemble loaded from %s: %s.%s", spec, exc, restore)
        return None, f"no ensemble loaded from `{spec}`: {exc}.{restore}", None
    report_file = path.parent / "report.json"
    report = json.loads(report_file.read_text()) if report_file.exists() else None
    for m in ensemble.members:
        log.info("loaded member %s (input %s)", m.source, m.data_config["input_size"])
    member_top1, _ = measured_top1(report, ensemble)
    status = (f"{answering_markdown(report, len(ensemble.members))} {len(ensemble.members)} member(s) from `{spec}` "
              f"({runtime} runtime) in {time.perf_counter() - start:.1f} s: "
              + ", ".join(f"`{m.source}`" + (f" ({top1:.2f}%)" if top1 is not None else "")
                          for m, top1 in zip(ensemble.members, member_top1)))
    return ensemble, status, report


def model_card_markdown(report: dict | None) -> str:
    _, body = split_front_matter(MODEL_CARD.read_text())
    if report is not None:
        body = fill_results(body, results_markdown(report))
    return body


# --- handlers ------------------------------------------------------------------------------------------

def _upload_path(payload) -> str | None:
    """The server-side path of an uploaded file (a FileData dict when preprocessing is off, else a path)."""
    return payload.get("path") if isinstance(payload, dict) else payload


def _uploaded_file(image) -> str:
    path = _upload_path(image)
    if not path or not os.path.isfile(path):
        raise gr.Error("Upload an image first.")
    return path


def _read_upload(image, size: tuple[int, int] | None = None) -> np.ndarray:
    """The uploaded image's pixels (resized and cropped to `size`), or a gr.Error with the same message POST
    /api/predict gives."""
    try:
        return decode_upload(_uploaded_file(image), size)
    except InputError as exc:
        raise gr.Error(str(exc)) from None


def make_classify(ensemble: Ensemble | None, admission: Admission, metrics: Metrics, version: str = ""):
    async def classify(image, request: gr.Request):
        """Image -> (top-3 calibrated probabilities, each member's top-3, uncertainty hint and timing), through the
        admission POST /api/predict shares: when it is full, a plain "busy" at once."""
        if ensemble is None:
            raise gr.Error(NO_WEIGHTS)
        path = _uploaded_file(image)
        start, status = time.perf_counter(), 500
        try:
            with admission.place(client_address(request)):
                pixels = await admission.decode(decode_upload, path, ensemble.source_size)
                prediction = await admission.run(predict_image, ensemble, pixels, DEFAULT_TOP_K, version)
            status = 200
            metrics.observe_after_upload("classify", time.perf_counter() - start)  # its upload came before it
        except Busy as exc:
            status = 503
            raise gr.Error(str(exc), title="Busy", print_exception=False) from None  # a crowd, not a fault
        except InputError as exc:
            status = exc.status
            raise gr.Error(str(exc)) from None
        except Exception:  # never a stack trace in the UI; the server log keeps it
            log.exception("prediction failed for %s", path)
            raise gr.Error("The prediction failed on the server; the details are in its log.") from None
        finally:
            metrics.observe("classify", status, time.perf_counter() - start)
        rows = [[m.source, ", ".join(f"{c.label} {c.probability:.2f}" for c in m.top_k), "yes" if m.agrees else "no"]
                for m in prediction.members]
        agree = sum(m.agrees for m in prediction.members)
        timing = (f"{prediction.latency_ms:.0f} ms for {len(rows)} members; {agree} of {len(rows)} members agree with "
                  f"the ensemble's top class. Model version `{prediction.model_version}`.")
        if prediction.prediction_set is not None:
            timing = f"**Prediction set:** {set_sentence(prediction.prediction_set, prediction.coverage)}.\n\n{timing}"
        if prediction.hint:
            timing = f"### {prediction.hint}\n\n{timing}"
        return {c.label: c.probability for c in prediction.top_k}, rows, timing
    return classify


def make_explain(ensemble: Ensemble | None):
    # Grad-CAM hooks see every forward pass of the module they are on: a member served by eager PyTorch may be
    # running a Classify request at the same moment, so Explain uses its own copy (ONNX-served members' torch
    # networks are idle and shared).
    models = [m.model if m.session is not None else copy.deepcopy(m.model) for m in ensemble.members] if ensemble else []

    def explain(image):
        """Image -> (one Grad-CAM overlay per member for the ensemble's top class, with captions; timing)."""
        if ensemble is None:
            raise gr.Error(NO_WEIGHTS)
        pixels = _read_upload(image)
        # The ensemble's answer from the decode Classify makes (to its source size), so the two buttons give one
        # number for a photo (PIL's and torch's antialiased resizes to 32 px differ: examples/flower.jpg was bird 0.93
        # in Classify and 0.84 decoded whole); the heatmaps are drawn on the whole image.
        answered = _read_upload(image, ensemble.source_size)
        start = time.perf_counter()
        try:
            probs, _ = ensemble.predict(torch.from_numpy(answered).permute(2, 0, 1)[None])
            top = int(probs[0].argmax())
            overlays = explain_members(ensemble.members, models, pixels, top)
        except Exception:  # never a stack trace in the UI; the server log keeps it
            log.exception("Grad-CAM failed for a %sx%s image", pixels.shape[1], pixels.shape[0])
            raise gr.Error("Explaining the prediction failed on the server; the details are in its log.") from None
        elapsed = time.perf_counter() - start
        name = ensemble.class_names[top]
        gallery = [(o, f"{m.source}: Grad-CAM for '{name}'") for m, o in zip(ensemble.members, overlays)]
        return gallery, (f"Grad-CAM for the ensemble's top class '{name}' ({probs[0, top]:.2f}) on {len(overlays)} "
                         f"members in {elapsed * 1000:.0f} ms. Red: the regions that raised this class's score most.")
    return explain


def _table_from_upload(csv_file):
    path = _upload_path(csv_file)
    if not path:
        raise gr.Error("Upload a CSV file first.")
    try:
        return read_table(path, MAX_CSV_ROWS)
    except ThresholdError as exc:
        raise gr.Error(f"Could not read the CSV: {exc}.") from None


def inspect_csv(csv_file):
    """CSV -> column pickers pre-filled by detection, and the positive-class choices."""
    if not csv_file:  # the file was cleared
        return gr.Dropdown(choices=[], value=None), gr.Dropdown(choices=[], value=None), \
            gr.Dropdown(choices=[AUTO], value=AUTO), ""
    table = _table_from_upload(csv_file)
    columns = table.column_names
    try:
        label, score = detect_columns(columns)
    except ThresholdError:
        label, score = columns[0], columns[min(1, len(columns) - 1)]
    import pyarrow.compute as pc
    values = [str(v) for v in pc.unique(table.column(label)).to_pylist()[:20]]
    return (gr.Dropdown(choices=columns, value=label), gr.Dropdown(choices=columns, value=score),
            gr.Dropdown(choices=[AUTO, *values], value=AUTO),
            f"{table.num_rows:,} rows, columns: {', '.join(columns)}")


def optimize_threshold(csv_file, label_column, score_column, positive, objective, beta, cost_fp, cost_fn,
                       min_precision, min_recall, with_intervals=False, progress=gr.Progress()):
    """CSV + choices -> summary (with bootstrap intervals if asked), metrics table, PR/ROC/metrics plots,
    per-threshold results CSV."""
    table = _table_from_upload(csv_file)
    params = ObjectiveParams(beta=float(beta or 1), cost_fp=float(cost_fp or 0), cost_fn=float(cost_fn or 0),
                             min_precision=float(min_precision or 0), min_recall=float(min_recall or 0))
    try:
        data = scored_labels_from_table(table, label_column or None, score_column or None,
                                        None if positive in (None, "", AUTO) else positive)
        result = optimize(data, objective, params)
        intervals, intervals_text = threshold_intervals(result, params, progress) if with_intervals else (None, "")
    except ThresholdError as exc:
        raise gr.Error(f"{exc}.") from None
    rows = [[name, round(at_half, 4), round(at_optimum, 4)] for name, at_half, at_optimum in comparison_rows(result)]
    s = result.summary()
    summary = (f"### Best threshold: **{result.threshold:.6g}**\n\n{OBJECTIVES[objective]} = **{result.value:.4f}** "
               f"(predict '{data.positive_label}' where `{data.score_column}` >= threshold). {s['rows']:,} rows, "
               f"{s['positives']:,} positive, {s['distinct_thresholds']:,} distinct scores; ROC AUC "
               f"{s['roc_auc']:.4f}, average precision {s['average_precision']:.4f}.")
    summary += intervals_text
    figures = curve_figures(result, intervals.band if intervals else None)
    cache = Path(gr.utils.get_upload_folder())  # in Gradio's cache, so it is deleted with the uploads
    cache.mkdir(parents=True, exist_ok=True)
    out = Path(tempfile.mkdtemp(prefix="thresholds-", dir=cache)) / "threshold_results.csv"
    results_table(result).to_csv(out, index=False)
    plots = [figures["pr"], figures["roc"], figures["metrics"]]
    for fig in plots:
        plt.close(fig)  # gr.Plot keeps its own copy; closing stops pyplot from accumulating figures
    return summary, rows, *plots, str(out)


def threshold_intervals(result, params, progress):
    """(the bootstrap intervals, their Markdown: one plain sentence and a table of every interval)."""
    from vision_ensemble.evaluation.threshold_bootstrap import bootstrap, interval_line  # Numba: only when asked

    progress(0, desc="bootstrap resamples")
    intervals = bootstrap(result, DEFAULT_BOOTSTRAP_REPLICATES, params=params,
                          progress=lambda done, total: progress(done / total, desc="bootstrap resamples"))
    rows = "\n".join(f"| {name} | {low:.4g} | {high:.4g} |" for name, (low, high) in intervals.intervals.items())
    return intervals, (f"\n\n**{interval_line(result, intervals)}**\n\n"
                       f"| {intervals.confidence:.0%} interval | from | to |\n| --- | --- | --- |\n{rows}")


# --- layout --------------------------------------------------------------------------------------------

def build_demo(ensemble: Ensemble | None, status: str, report: dict | None, admission: Admission, metrics: Metrics,
               version: str = "") -> gr.Blocks:
    with gr.Blocks(title="Vision Ensemble") as demo:
        gr.Markdown("# Vision Ensemble\nAn ensemble of timm backbones trained on CIFAR-10, and a decision-threshold "
                    "optimizer for any binary classifier's scores.")
        with gr.Tab("Classify"):
            gr.Markdown(status if ensemble is not None else NO_MODELS)
            with gr.Row():
                with gr.Column():
                    image = gr.Image(label="Image", type="filepath", sources=["upload", "webcam", "clipboard"], height=320)
                    classify_button = gr.Button("Classify", variant="primary")
                    explain_button = gr.Button("Explain (Grad-CAM per member)")
                with gr.Column():
                    label = gr.Label(num_top_classes=3, label="Calibrated probabilities")
                    members = gr.Dataframe(headers=["member", "top-3", "agrees with ensemble"], label="Members",
                                           interactive=False)
                    timing = gr.Markdown()
                    explanations = gr.Gallery(label="Grad-CAM: where each member looked for the top class",
                                              columns=3, height="auto", object_fit="contain")
                    explain_timing = gr.Markdown()
            example_files = sorted(str(p) for p in EXAMPLES.glob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
            if example_files:
                gr.Examples(example_files, inputs=image)
            # As many at once as the admission takes on: it, not Gradio's queue, decides who waits and who is told
            # the server is busy.
            classify_button.click(make_classify(ensemble, admission, metrics, version), inputs=image,
                                  outputs=[label, members, timing], api_name="classify", preprocess=False,
                                  concurrency_limit=admission.capacity)
            explain_button.click(make_explain(ensemble), inputs=image, outputs=[explanations, explain_timing],
                                 api_name="explain", preprocess=False, concurrency_limit=1)
        with gr.Tab("Threshold optimization"):
            gr.Markdown("Upload a CSV with one row per example: a true label (0/1, true/false, yes/no, or two class "
                        "names) and the classifier's score. Every distinct score is tried as the threshold.")
            with gr.Row():
                with gr.Column(scale=1):
                    csv_file = gr.File(label="CSV of labels and scores", file_types=[".csv", ".tsv", ".txt"])
                    csv_info = gr.Markdown()
                    label_col = gr.Dropdown(label="Label column", choices=[], allow_custom_value=True)
                    score_col = gr.Dropdown(label="Score column", choices=[], allow_custom_value=True)
                    positive = gr.Dropdown(label="Positive class", choices=[AUTO], value=AUTO, allow_custom_value=True)
                    objective = gr.Dropdown(label="Objective", value="f1",
                                            choices=[(f"{k}: {v}", k) for k, v in OBJECTIVES.items()])
                    with gr.Row():
                        beta = gr.Number(label="beta (fbeta)", value=1.0)
                        cost_fp = gr.Number(label="cost of a false positive (cost)", value=1.0)
                        cost_fn = gr.Number(label="cost of a false negative (cost)", value=1.0)
                    with gr.Row():
                        min_precision = gr.Number(label="min precision (recall_at_precision)", value=0.9)
                        min_recall = gr.Number(label="min recall (precision_at_recall)", value=0.9)
                    with_intervals = gr.Checkbox(
                        label=f"How sure is it? 95% intervals from {DEFAULT_BOOTSTRAP_REPLICATES:,} resamples",
                        info="reruns the exact search on resamples of your rows: a wide range means more data would "
                             "help", value=False)
                    find_button = gr.Button("Find the best threshold", variant="primary")
                    example_csv = EXAMPLES / "classifier_scores.csv"
                    if example_csv.exists():
                        example_slot = gr.Examples([[str(example_csv)]], inputs=csv_file)
                with gr.Column(scale=2):
                    summary = gr.Markdown()
                    metrics_table = gr.Dataframe(headers=["metric", "at 0.5", "at optimum"], label="Metrics",
                                                 interactive=False)
                    with gr.Row():
                        pr_plot = gr.Plot(label="Precision-recall")
                        roc_plot = gr.Plot(label="ROC")
                    metrics_plot = gr.Plot(label="Metrics vs threshold")
                    results_csv = gr.File(label="Metrics at every threshold (CSV)")
            csv_file.upload(inspect_csv, inputs=csv_file, outputs=[label_col, score_col, positive, csv_info],
                            api_name="inspect_csv")
            find_button.click(optimize_threshold,
                              inputs=[csv_file, label_col, score_col, positive, objective, beta, cost_fp, cost_fn,
                                      min_precision, min_recall, with_intervals],
                              outputs=[summary, metrics_table, pr_plot, roc_plot, metrics_plot, results_csv],
                              # One at a time: matplotlib is not thread-safe, and its figures are drawn here and
                              # again in Gradio's postprocess (two at once failed once in the soak hour: BENCHMARKS.md).
                              api_name="optimize_threshold", concurrency_limit=1)
            if example_csv.exists():  # picking the example fills the column pickers as an upload does
                example_slot.load_input_event.then(inspect_csv, inputs=csv_file,
                                                   outputs=[label_col, score_col, positive, csv_info],
                                                   api_visibility="private")
        with gr.Tab("Model card"):
            gr.Markdown(model_card_markdown(report))
    return demo


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", default=os.environ.get("VISION_ENSEMBLE_MANIFEST", DEFAULT_MANIFEST),
                        help="ensemble.json path, a folder holding it, or a Hub repo id (env VISION_ENSEMBLE_MANIFEST); "
                             "default: the CIFAR-10 ensemble shipped in models/cifar10/")
    parser.add_argument("--runtime", choices=["onnx", "torch"], default=os.environ.get("VISION_ENSEMBLE_RUNTIME", "onnx"),
                        help="run the networks with ONNX Runtime (fp32, ~1.5x faster on CPU) or eager PyTorch")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    parser.add_argument("--slots", type=int, default=int(os.environ.get("VISION_ENSEMBLE_SLOTS", CLASSIFY_CONCURRENCY)),
                        help="predictions at once, the Classify tab's and the JSON API's together (env "
                             "VISION_ENSEMBLE_SLOTS)")
    parser.add_argument("--queue", type=int, default=int(os.environ.get("VISION_ENSEMBLE_QUEUE", ADMISSION_QUEUE)),
                        help="requests that may wait beyond the running ones; the next is told the server is busy "
                             "(the API: 503 with Retry-After) (env VISION_ENSEMBLE_QUEUE)")
    args = parser.parse_args(argv)
    if args.slots < 1 or args.queue < 0:
        parser.error(f"--slots {args.slots} --queue {args.queue}: give at least 1 slot and a queue of 0 or more")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    limit_malloc_arenas()  # before the server's worker threads start: memory stays flat over weeks
    fix_mmap_threshold()
    torch.set_grad_enabled(False)
    ensemble, status, report = load_ensemble(args.manifest, args.runtime)
    log.info(status)
    version = model_version(ensemble) if ensemble is not None else None
    # One admission and one set of metrics for the Classify tab and the JSON API.
    admission = Admission(args.slots, args.queue, WAITING_PER_CLIENT)
    metrics = Metrics(admission, ensemble)
    demo = build_demo(ensemble, status, report, admission, metrics, version or "")
    demo.queue(default_concurrency_limit=CLASSIFY_CONCURRENCY, max_size=64)
    # Uploads and results are deleted after TEMP_FILE_MAX_AGE_S (not by delete_cache: see serving/tempfiles.py).
    sweep_temp_files(demo, gr.utils.get_upload_folder(), TEMP_SWEEP_EVERY_S, TEMP_FILE_MAX_AGE_S)
    trim_periodically()  # freed memory between live blocks goes back to the kernel (serving/allocator.py)
    # One server: the JSON API's routes (and /docs) first, the Space mounted at / behind them.
    api = create_api(ensemble, status, args.runtime, version, admission, metrics, report)
    app = gr.mount_gradio_app(api, demo, path="/", max_file_size=MAX_UPLOAD_BYTES, show_error=True,
                              allowed_paths=[str(EXAMPLES)])
    app.add_middleware(AdmittedUploads, admission=admission, metrics=metrics)  # the Space's uploads under the same admission
    log.info("serving the Space at http://%s:%d/ and the JSON API at /api/predict (docs at /docs); %d slot(s), %d "
             "more may wait", args.host, args.port, args.slots, args.queue)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", timeout_keep_alive=KEEP_ALIVE_S,
                forwarded_allow_ips=FORWARDED_ALLOW_IPS)


if __name__ == "__main__":
    main()
