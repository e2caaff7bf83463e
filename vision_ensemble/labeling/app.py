"""Label a folder of images in the browser, then export a train/val/test tree that train/finetune.py reads.

    python -m vision_ensemble.labeler photos/ --classes cat,dog
    python -m vision_ensemble.labeler photos/ --classes cat,dog --manifest results/ensemble.json
    python -m vision_ensemble.labeler photos/ --export photos-dataset --ratios 0.8,0.1,0.1 --seed 0
    python -m vision_ensemble.labeler photos/ --review results/label_issues.csv

Keys: 1-9 pick a class (A and B too when there are two classes), S skips, U or Backspace undoes the last
label.  Every label is written to labels.csv at once; a restart resumes at the first unlabelled image.
A local tool: it listens on 127.0.0.1 unless --host says otherwise.
"""

from __future__ import annotations

import argparse
import html
import json
import logging
import os
import sys
from pathlib import Path

import gradio as gr
from PIL import Image

from ..config import DEFAULT_SEED, DEFAULT_SPLIT_RATIOS, LABELER_DISPLAY_SIZE, LABELS_FILENAME, SPLITS_FILENAME
from ..data import IMAGE_EXTENSIONS
from .store import (SPLITS, LabelingError, LabelQueue, LabelStore, export_dataset, find_images, parse_classes,
                    parse_ratios, rank_by_uncertainty, review_queue)

log = logging.getLogger("vision_ensemble.labeler")

# Clicks the button a key stands for.  Keys typed into a text box, or pressed with a modifier, are left alone;
# buttons on a hidden tab are not clicked.
KEYBOARD_JS = """
<script>
document.addEventListener("keydown", (event) => {
  const target = event.target;
  if (event.ctrlKey || event.metaKey || event.altKey || event.repeat) return;
  if (target.closest && target.closest("input, textarea, select, [contenteditable='true']")) return;
  const shortcuts = %s;
  const id = shortcuts[event.key.toLowerCase()];
  const button = id && document.getElementById(id);
  if (!button || !button.checkVisibility()) return;
  event.preventDefault();  // Backspace must not navigate, keys must not scroll
  button.click();
});
</script>
"""


def shortcut_keys(classes: list[str]) -> list[list[str]]:
    """The keys of each class button: 1-9 by position, and A/B as well when there are exactly two classes."""
    keys = [[str(i + 1)] if i < 9 else [] for i in range(len(classes))]
    if len(classes) == 2:
        keys[0].append("a")
        keys[1].append("b")
    return keys


def keyboard_head(classes: list[str]) -> str:
    shortcuts = {key: f"label-{i}" for i, keys in enumerate(shortcut_keys(classes)) for key in keys}
    shortcuts.update({"s": "skip", "u": "undo", "backspace": "undo"})
    return KEYBOARD_JS % json.dumps(shortcuts)


def for_display(pixels) -> Image.Image:
    """A screen-sized copy: a 40-megapixel photo need not cross the wire, and a 32 px thumbnail is enlarged
    by whole pixels (nearest neighbour, so nothing is invented) until it can be judged."""
    image = Image.fromarray(pixels)
    smallest, largest = LABELER_DISPLAY_SIZE
    factor = smallest // max(image.size)
    if factor > 1:
        return image.resize((image.width * factor, image.height * factor), Image.NEAREST)
    image.thumbnail((largest, largest))
    return image


def progress_html(queue: LabelQueue) -> str:
    labelled, total, counts = queue.progress()
    per_class = " · ".join(f"{html.escape(name)} {n}" for name, n in sorted(counts.items()))
    return (f'<progress value="{labelled}" max="{max(total, 1)}" style="width:100%"></progress>'
            f'<div id="progress-text"><b>{labelled} / {total} labelled</b>{" · " + per_class if per_class else ""}</div>')


def unreadable_html(queue: LabelQueue) -> str:
    if not queue.unreadable:
        return ""
    items = "".join(f"<li><code>{html.escape(name)}</code>: {html.escape(reason)}</li>"
                    for name, reason in sorted(queue.unreadable.items()))
    return f"<details open><summary>{len(queue.unreadable)} unreadable file(s), skipped</summary><ul>{items}</ul></details>"


def build_demo(queue: LabelQueue, classes: list[str], default_export: Path) -> gr.Blocks:
    def view(filename: str | None, pixels=None):
        """Everything the label tab shows for `filename` (None: nothing left to label)."""
        if filename is None:
            caption = "**Every readable image is labelled.** Export the dataset in the Export tab, or undo to go back."
            image, suggestion = None, ""
        else:
            caption = f"`{filename}`"
            image = for_display(pixels)
            s = queue.suggestions.get(filename)
            suggestion = "" if s is None else (
                f"Ensemble suggests **{s.label}** ({s.confidence:.0%} confident)" if s.given is None else
                f"Labelled **{html.escape(s.given)}**; the ensemble suggests **{html.escape(s.label)}** (score "
                f"{s.confidence:.2f} that the label is wrong). Press the right class, the given one to keep it.")
        return filename, image, caption, suggestion, progress_html(queue), unreadable_html(queue)

    def first(current):
        return view(*queue.next_image(None))

    def make_label(name: str):
        def label(current):
            if current is None:
                raise gr.Error("Nothing to label: every readable image has a label.")
            try:
                queue.store.set(current, name)
            except LabelingError as exc:  # e.g. the disk is full: the label is not recorded, nothing else lost
                raise gr.Error(str(exc)) from None
            log.info("%s -> %s", current, name)
            return view(*queue.next_image(current))
        return label

    def skip(current):
        return view(*queue.next_image(current))

    def undo(current):
        try:
            filename = queue.store.undo()
        except LabelingError as exc:
            raise gr.Error(str(exc)) from None
        if filename is None:
            gr.Warning("Nothing to undo.")
            return gr.skip()  # the page stays as it is
        pixels = queue.decode(filename) if filename in queue.order else None
        if pixels is None:  # its file was removed or damaged since it was labelled: carry on with the queue
            gr.Warning(f"Removed the label of {filename}, which can no longer be shown.")
            return view(*queue.next_image(current))
        return view(filename, pixels)

    def export(train, val, test, seed, out_dir):
        try:
            result = export_dataset(queue.folder, queue.store.labels(), out_dir or default_export,
                                    parse_ratios([train, val, test]), int(seed or 0))
        except LabelingError as exc:
            raise gr.Error(str(exc)) from None
        note = f" {len(result.missing)} labelled file(s) no longer in the folder were left out." if result.missing else ""
        summary = (f"Exported {sum(row[-1] for row in result.table())} images to `{result.out_dir}` "
                   f"({result.linked} hard links) with `splits.csv`.{note} Train on it with:\n\n"
                   f"```\naccelerate launch train/finetune.py --data-dir {result.out_dir}\n```")
        return summary, result.table()

    keys = shortcut_keys(classes)
    with gr.Blocks(title="Vision Ensemble labeller") as demo:
        gr.Markdown(f"# Label `{queue.folder}`\nKeys: "
                    + ", ".join(f"**{'/'.join(k).upper()}** {name}" for name, k in zip(classes, keys) if k)
                    + ", **S** skip, **U** or **Backspace** undo. Every label is saved to "
                      f"`{queue.store.path}` at once.")
        current = gr.State(None)
        with gr.Tab("Label"):
            with gr.Row():
                with gr.Column(scale=3):
                    image = gr.Image(show_label=False, interactive=False, height=600, type="pil")
                    caption = gr.Markdown(elem_id="caption")
                with gr.Column(scale=1):
                    suggestion = gr.Markdown()
                    label_buttons = [gr.Button(f"{'/'.join(k).upper()} · {name}" if k else name, variant="primary",
                                               elem_id=f"label-{i}") for i, (name, k) in enumerate(zip(classes, keys))]
                    with gr.Row():
                        skip_button = gr.Button("S · Skip", elem_id="skip")
                        undo_button = gr.Button("U · Undo", elem_id="undo")
                    progress = gr.HTML()
                    unreadable = gr.HTML()
        with gr.Tab("Export"):
            gr.Markdown("A stratified train/val/test split of the labelled images (each class in the same "
                        "shares), written as an image-folder tree of hard links (copies where links are "
                        "impossible; the originals never move) plus `splits.csv`.")
            with gr.Row():
                train_share, val_share, test_share = (gr.Number(label=f"{s} share", value=r, minimum=0, maximum=1)
                                                      for s, r in zip(SPLITS, DEFAULT_SPLIT_RATIOS))
                seed = gr.Number(label="seed", value=DEFAULT_SEED, precision=0)
            out_dir = gr.Textbox(label="Output folder", value=str(default_export))
            export_button = gr.Button("Export", variant="primary")
            export_summary = gr.Markdown()
            export_counts = gr.Dataframe(headers=["class", *SPLITS, "total"], label="Images per class and split",
                                         interactive=False)

        shown = [current, image, caption, suggestion, progress, unreadable]
        # One queue for every event that changes labels: presses are applied in order, never concurrently.
        serial = dict(inputs=current, outputs=shown, concurrency_id="labels", concurrency_limit=1)
        demo.load(first, **serial)
        for name, button in zip(classes, label_buttons):
            button.click(make_label(name), **serial)
        skip_button.click(skip, **serial)
        undo_button.click(undo, **serial)
        export_button.click(export, inputs=[train_share, val_share, test_share, seed, out_dir],
                            outputs=[export_summary, export_counts], concurrency_id="labels", concurrency_limit=1)
    return demo


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m vision_ensemble.labeler", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="folder of images to label (searched at any depth)")
    parser.add_argument("--classes", help="class names, comma-separated, e.g. cat,dog (default with --manifest: "
                                          "the ensemble's classes; --export needs none: it exports labels.csv)")
    parser.add_argument("--labels", type=Path, help=f"labels file (default: FOLDER/{LABELS_FILENAME})")
    parser.add_argument("--manifest", help="ensemble.json (or a folder holding it): show its suggested label and "
                                           "queue the images least confident first")
    parser.add_argument("--review", type=Path, metavar="LABEL_ISSUES_CSV",
                        help="review the labels evaluate.py --label-issues flagged: only those images, most likely "
                             "wrong first, with the given and the suggested label; corrections go to labels.csv")
    parser.add_argument("--export", type=Path, metavar="OUT", help="do not start the app: export the labels to "
                        "OUT/{train,val,test}/<class>/ and OUT/splits.csv, then exit")
    parser.add_argument("--ratios", default=",".join(f"{r:g}" for r in DEFAULT_SPLIT_RATIOS),
                        help="train,val,test shares for --export (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of the --export split (default: %(default)s)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s, this machine only)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)),
                        help="port (default: %(default)s, or $GRADIO_SERVER_PORT)")
    return parser


def run_export(folder: Path, store: LabelStore, args) -> None:
    result = export_dataset(folder, store.labels(), args.export, parse_ratios(args.ratios), args.seed)
    for name in result.missing:
        print(f"left out (no longer in {folder}): {name}")
    width = max(len("class"), *(len(name) for name in result.counts))
    print(f"{'class':<{width}} " + " ".join(f"{s:>6}" for s in (*SPLITS, "total")))
    for row in result.table():
        print(f"{row[0]:<{width}} " + " ".join(f"{n:>6}" for n in row[1:]))
    print(f"exported to {result.out_dir} ({result.linked} hard links; the split is in {SPLITS_FILENAME}); "
          f"train with:\n  accelerate launch train/finetune.py --data-dir {result.out_dir}")


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    folder = args.folder.expanduser().resolve()
    try:
        files = find_images(folder)
        store = LabelStore(args.labels or folder / LABELS_FILENAME)
        if args.export:
            return run_export(folder, store, args)
        if not files:
            raise LabelingError(f"no image files in {folder} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
        ensemble = None
        if args.manifest:
            from ..evaluation.ensemble import Ensemble
            from ..model import ModelError
            try:
                ensemble = Ensemble.from_manifest(args.manifest)
            except ModelError as exc:
                raise LabelingError(str(exc)) from None
        review = review_queue(folder, args.review, store) if args.review else None
        if args.classes:
            classes = parse_classes(args.classes)
        elif ensemble is not None:
            classes = list(ensemble.class_names)
        elif review is not None:
            classes = sorted({*store.labels().values(), *(s.label for s in review.suggestions.values()),
                              *(s.given for s in review.suggestions.values())})
        else:
            raise LabelingError("give the classes to label with --classes, e.g. --classes cat,dog")
    except LabelingError as exc:
        sys.exit(f"error: {exc}")
    if review is not None:
        queue = review
    elif ensemble is not None:
        order, suggestions, unreadable = rank_by_uncertainty(folder, files, ensemble)
        queue = LabelQueue(folder, order, store, suggestions, unreadable)
    else:
        queue = LabelQueue(folder, files, store)
    labelled, total, _ = queue.progress()
    log.info("%d image files %sin %s, %d already %s in %s", total, "to review " if review else "", folder, labelled,
             "reviewed" if review else "labelled", store.path)
    demo = build_demo(queue, classes, folder.with_name(folder.name + "-dataset"))
    demo.queue(max_size=256)
    demo.launch(server_name=args.host, server_port=args.port, head=keyboard_head(classes), show_error=True)


if __name__ == "__main__":
    main()
