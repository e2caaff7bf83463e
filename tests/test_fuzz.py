"""Generated inputs (Hypothesis) for the three readers of untrusted data: the threshold CSV reader, the image
decoder and the JSON API's request parsing.  Each gives a correct answer or its own error with a readable
message, never another exception, a 5xx or a hang.  Examples are bounded and deadlines off (a loaded 2-core
machine); every bug found is pinned by an `@example`."""

from __future__ import annotations

import base64
import faulthandler
import json
import struct
import time
import zlib
from contextlib import contextmanager

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from conftest import EXAMPLES
from vision_ensemble.evaluation.thresholds import ObjectiveParams, ThresholdError, optimize, read_scores_csv
from vision_ensemble.images import ImageError, load_rgb

FUZZ = settings(max_examples=80, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])


def readable(message: str) -> bool:
    """One plain line a person can act on: no traceback, no repr of an exception object."""
    return bool(message.strip()) and "Traceback" not in message and "\n" not in message.strip()


@contextmanager
def time_bound(seconds: float):
    """Fail (with every thread's stack) rather than hang: the process is ended if the block outlives `seconds`
    twice over; a block slower than `seconds` fails the test."""
    faulthandler.dump_traceback_later(2 * seconds, exit=True)
    start = time.perf_counter()
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
    assert time.perf_counter() - start < seconds, f"took {time.perf_counter() - start:.1f} s"


# --- the threshold CSV reader -------------------------------------------------------------------------

LABEL_STYLES = {  # (negative, positive) as written, and the --positive a user must give (None: detected)
    "digits": (("0", "1"), None), "bools": (("false", "true"), None), "words": (("no", "yes"), None),
    "upper": (("FALSE", "TRUE"), None), "floats": (("0.0", "1.0"), None), "names": (("dog", "cat"), "cat"),
    "padded": ((" neg ", " pos "), None),
}
ENCODINGS = ("utf-8", "utf-8-sig", "utf-16", "latin-1")


@st.composite
def score_csvs(draw):
    """(csv bytes, expected labels or None, expected scores or None, positive): None when the file is bad."""
    n = draw(st.integers(1, 25))
    labels = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    scores = draw(st.lists(st.one_of(st.floats(-1e6, 1e6, allow_nan=False, width=32),
                                     st.sampled_from([0.0, 0.5, 1.0])), min_size=n, max_size=n))
    style = draw(st.sampled_from(sorted(LABEL_STYLES)))
    (negative, positive_text), positive = LABEL_STYLES[style]
    delimiter = draw(st.sampled_from([",", ";", "\t", "|"]))
    quote_all = draw(st.booleans())
    encoding = draw(st.sampled_from(ENCODINGS))
    header = draw(st.sampled_from([("label", "score"), ("y_true", "y_score"), ("target", "probability"),
                                   ("Label", " Score ")]))
    extra = draw(st.booleans())  # an extra text column, first, with a non-ASCII name
    score_cells = [repr(float(s)) for s in scores]
    # Damage: a missing score, a word, NaN/inf, a missing label, one class only, or nothing.
    damage = draw(st.sampled_from(["none"] * 4 + ["missing_score", "word_score", "nan", "inf", "missing_label",
                                                  "one_class", "empty", "header_only"]))
    row = draw(st.integers(0, n - 1))
    label_cells = [positive_text if y else negative for y in labels]
    if damage == "missing_score":
        score_cells[row] = ""
    elif damage == "word_score":
        score_cells[row] = "high"
    elif damage in ("nan", "inf"):
        score_cells[row] = draw(st.sampled_from(["nan", "NaN"] if damage == "nan" else ["inf", "-inf", "Infinity"]))
    elif damage == "missing_label":
        label_cells[row] = ""
    elif damage == "one_class":
        label_cells = [label_cells[0]] * n

    def cell(text: str) -> str:
        return f'"{text}"' if quote_all or delimiter in text else text

    columns = (["café"] if extra else []) + list(header)
    lines = [delimiter.join(cell(c) for c in columns)]
    for i in range(n):
        lines.append(delimiter.join(cell(c) for c in ([f"row {i}, é"] if extra else []) + [label_cells[i], score_cells[i]]))
    text = "\n".join(lines) + draw(st.sampled_from(["\n", "", "\r\n"]))
    if damage == "header_only":
        text = lines[0] + "\n"
    data = b"" if damage == "empty" else text.encode(encoding)
    both_classes = len(set(label_cells)) == 2
    valid = damage in ("none", "one_class") and both_classes
    return data, (np.array(labels) if valid else None), (np.array(scores, dtype=np.float64) if valid else None), positive


def brute_force_best(y: np.ndarray, scores: np.ndarray, objective: str, params: ObjectiveParams) -> float:
    """The objective's best value over every distinct score as the threshold, with scikit-learn's metrics."""
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, matthews_corrcoef

    values = []
    for t in np.unique(scores):
        predicted = scores >= t
        if objective == "f1":
            values.append(f1_score(y, predicted, zero_division=0))
        elif objective == "accuracy":
            values.append(accuracy_score(y, predicted))
        elif objective == "mcc":
            values.append(matthews_corrcoef(y, predicted))
        else:  # cost, minimised
            tn, fp, fn, tp = confusion_matrix(y, predicted, labels=[False, True]).ravel()
            values.append(-(params.cost_fp * fp + params.cost_fn * fn) / len(y))
    return max(values)


@FUZZ
@example(case=("label,score\nfalse,0.0\ntrue,1.0\n".encode("utf-16"), np.array([False, True]), np.array([0.0, 1.0]),
               None), objective="f1")  # Excel's "Unicode text" (UTF-16 with a BOM) was refused as binary
@example(case=("café;label;score\nx;0;0.25\né;1;0.75\n".encode("latin-1"), np.array([False, True]),
               np.array([0.25, 0.75]), None), objective="f1")  # Windows-1252 was refused as not UTF-8
@given(case=score_csvs(), objective=st.sampled_from(["f1", "accuracy", "mcc", "cost"]))
def test_csv_reader_gives_the_optimum_or_a_threshold_error(tmp_path_factory, case, objective):
    data, labels, scores, positive = case
    path = tmp_path_factory.mktemp("csv") / "scores.csv"
    path.write_bytes(data)
    params = ObjectiveParams(cost_fp=1.0, cost_fn=3.0)
    try:
        read = read_scores_csv(path, positive=positive)
        result = optimize(read, objective, params)
    except ThresholdError as exc:
        assert readable(str(exc)), repr(str(exc))
        assert labels is None, f"a valid file was refused: {exc}"
        return
    assert labels is not None, "a bad file was accepted"
    np.testing.assert_array_equal(read.y, labels)
    np.testing.assert_allclose(read.scores, scores, rtol=1e-12)
    best = brute_force_best(labels, scores, objective, params)
    expected = -best if objective == "cost" else best
    assert result.value == pytest.approx(expected, abs=1e-9)


@FUZZ
@example(data=b"\x80\r\x01")  # a short non-UTF-8 file reached Arrow, whose header names raised UnicodeDecodeError
@given(data=st.binary(max_size=400) | st.text(max_size=300).map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_csv_reader_on_arbitrary_bytes(data):
    """Random bytes or text: a result or a ThresholdError, nothing else."""
    try:
        optimize(read_scores_csv(data), "f1")
    except ThresholdError as exc:
        assert readable(str(exc)), repr(str(exc))


def test_csv_reader_on_a_huge_file(tmp_path):
    """Past the row limit: refused with the count; a file of 300,000 rows is read whole."""
    rng = np.random.default_rng(0)
    y, s = rng.integers(0, 2, 300_000), rng.random(300_000)
    path = tmp_path / "big.csv"
    path.write_text("label,score\n" + "".join(f"{a},{b:.6f}\n" for a, b in zip(y, s)))
    with pytest.raises(ThresholdError, match="300,000 rows; the limit is 1,000"):
        read_scores_csv(path, max_rows=1000)
    assert len(read_scores_csv(path).y) == 300_000


# --- the image decoder ---------------------------------------------------------------------------------

REAL_IMAGES = {p.name: p.read_bytes() for p in sorted(EXAMPLES.glob("*")) if p.suffix in (".jpg", ".png")}
MAGIC = [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"GIF89a", b"BM", b"RIFF\x00\x00\x00\x00WEBP", b"II*\x00",
         b"\x00\x00\x01\x00"]


def with_declared_size(data: bytes, width: int, height: int, fix_crc: bool) -> bytes:
    """The file with its header claiming width x height: PNG's IHDR (its CRC fixed or not), JPEG's SOF."""
    if data.startswith(MAGIC[0]):
        ihdr = bytearray(data[12:29])
        ihdr[4:12] = struct.pack(">II", width, height)
        if fix_crc:
            ihdr[13:17] = struct.pack(">I", zlib.crc32(bytes(ihdr[:13])))
        return data[:12] + bytes(ihdr) + data[29:]
    sof = max(data.find(b"\xff\xc0"), data.find(b"\xff\xc2"))
    if sof < 0:
        return data
    return data[:sof + 5] + struct.pack(">HH", min(height, 65535), min(width, 65535)) + data[sof + 9:]


@st.composite
def mutated_images(draw):
    name = draw(st.sampled_from(sorted(REAL_IMAGES)))
    data = bytearray(REAL_IMAGES[name])
    kind = draw(st.sampled_from(["truncate", "bit_flips", "header", "declared_size", "tail_garbage"]))
    if kind == "truncate":
        data = data[:draw(st.integers(0, len(data) - 1))]
    elif kind == "bit_flips":
        for _ in range(draw(st.integers(1, 20))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
    elif kind == "header":
        magic = draw(st.sampled_from(MAGIC))
        data[:len(magic)] = magic
    elif kind == "declared_size":
        side = st.sampled_from([0, 1, 65535, 2**31 - 1, 2**32 - 1]) | st.integers(1, 20000)
        data = bytearray(with_declared_size(bytes(data), draw(side), draw(side), draw(st.booleans())))
    else:
        data += draw(st.binary(min_size=1, max_size=200))
    return name, kind, bytes(data)


@FUZZ
@given(case=mutated_images(), size=st.sampled_from([None, (32, 32), (224, 224)]))
def test_image_decoder_on_mutated_files(case, size):
    name, kind, data = case
    with time_bound(10):
        try:
            pixels = load_rgb(data, size=size)
        except ImageError as exc:
            assert readable(str(exc)), repr(str(exc))
            return
    assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3 and pixels.size > 0
    if size is not None:
        assert pixels.shape[:2] == size


# --- the JSON API's request parsing --------------------------------------------------------------------

GOOD_IMAGE = REAL_IMAGES["cifar10_cat.png"]
TOP_K_VALUES = st.one_of(st.integers(-3, 12), st.sampled_from([10**30, 2.0, 2.5, True, None, "", " 2 ", "1e3", "３",
                                                                "two", [1], {"k": 1}]))


@st.composite
def api_requests(draw):
    """(request kwargs for TestClient.post, the top_k expected in a 200 answer or None when it must be a 4xx)."""
    kind = draw(st.sampled_from(["multipart", "json", "raw"]))
    image = draw(st.sampled_from(["good", "empty", "garbage", "text"]))
    content = {"good": GOOD_IMAGE, "empty": b"", "garbage": draw(st.binary(min_size=1, max_size=300)),
               "text": b"label,score\n1,0.5\n"}[image]
    top_k = draw(TOP_K_VALUES)
    sent_top_k = draw(st.booleans())
    expected_k = (top_k if sent_top_k else 3) if image == "good" else None
    if kind == "multipart":
        field = draw(st.sampled_from(["image", "image", "file"]))
        filename = draw(st.sampled_from(["a.png", "", "x"]))
        files = {field: (filename, content, draw(st.sampled_from(["image/png", "text/plain"])))}
        data = {"top_k": str(top_k)} if sent_top_k and top_k is not None else {}
        if draw(st.booleans()):
            data["other"] = "field"
        valid_k = sent_top_k and isinstance(top_k, int) and not isinstance(top_k, bool) and 1 <= top_k <= 10
        # A part with an empty file name is a plain form field (what a browser sends for an empty file input).
        if field != "image" or not filename or "other" in data or (sent_top_k and (top_k is None or not valid_k)) or image != "good":
            expected_k = None
        return {"files": files, "data": data}, expected_k
    if kind == "json":
        payload = {"image": draw(st.sampled_from([base64.b64encode(content).decode(), "not base64!", 3, None]))}
        if sent_top_k:
            payload["top_k"] = top_k
        valid_k = not sent_top_k or (type(top_k) in (int, float) and top_k == int(top_k) and 1 <= top_k <= 10)
        if not isinstance(payload["image"], str) or payload["image"] == "not base64!" or not valid_k:
            expected_k = None
        elif sent_top_k and image == "good":
            expected_k = int(top_k)
        body = json.dumps(payload).encode()
        if draw(st.booleans()):  # cut or damaged JSON
            body, expected_k = body[:draw(st.integers(0, len(body) - 1))], None
        content_type = draw(st.sampled_from(["application/json", "application/json; charset=utf-8", "Application/JSON"]))
        return {"content": body, "headers": {"content-type": content_type}}, expected_k
    content_type = draw(st.sampled_from(["", "text/plain", "image/png", "application/x-www-form-urlencoded",
                                         "multipart/form-data", "multipart/form-data; boundary=xyz"]))
    headers = {"content-type": content_type} if content_type else {}
    return {"content": draw(st.binary(max_size=300)) if draw(st.booleans()) else content, "headers": headers}, None


@pytest.fixture(scope="module")
def api_client(ensemble_dir):
    from fastapi.testclient import TestClient

    from vision_ensemble.evaluation.ensemble import Ensemble
    from vision_ensemble.serving.api import create_api

    ensemble = Ensemble.from_manifest(ensemble_dir / "ensemble.json")
    with TestClient(create_api(ensemble, "fuzz", "torch", "v0"), raise_server_exceptions=False) as client:
        yield client


@FUZZ
@given(case=api_requests())
def test_api_request_parsing(api_client, case):
    request, expected_k = case
    response = api_client.post("/api/predict", **request)
    assert response.status_code in (200, 400, 413, 415), (response.status_code, response.text[:300])
    if response.status_code != 200:
        assert readable(response.json()["error"]), response.text
        assert expected_k is None, f"a valid request was refused: {response.text}"
        return
    assert expected_k is not None, f"a bad request was answered: {request}"
    assert len(response.json()["top_k"]) == expected_k
