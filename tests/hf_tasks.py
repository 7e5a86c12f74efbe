"""Small local copies of real image-to-text datasets, in each hub dataset's own columns and format.

Each builder writes a few rows with Pillow images, with the features the hub dataset
declares, stored the way a user would hold a local copy: parquet files in a hub-style
folder (ChartQA, TextVQA, MMMU) or a ``save_to_disk`` folder (DocVQA, COCO captions).
``TASKS[name](dir) -> (path to pass as workload.path, rows written)``.
"""

from __future__ import annotations

from pathlib import Path

import datasets
from PIL import Image, ImageDraw

STRINGS = datasets.List(datasets.Value("string"))


def picture(text: str, size: tuple[int, int] = (320, 200)) -> Image.Image:
    """A white image with ``text`` written on it (stands in for a chart, document or photo)."""
    image = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(image)
    draw.rectangle((10, size[1] - 60, 60, size[1] - 10), fill=(30, 70, 220))
    draw.text((20, 20), text, fill=(0, 0, 0))
    return image


def _parquet(rows: list[dict], features: datasets.Features, out: Path, split: str) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_list(rows, features=features).to_parquet(str(out / f"{split}-00000-of-00001.parquet"))
    return out


CHARTQA_ROWS = [
    {"query": "What is the value of the blue bar?", "label": ["42"], "human_or_machine": 0},
    {"query": "Which country has the highest share?", "label": ["Brazil"], "human_or_machine": 1},
    {"query": "What is the average of the two bars?", "label": ["17.5"], "human_or_machine": 0},
    {"query": "Is the line rising?", "label": ["Yes"], "human_or_machine": 1},
    {"query": "How many bars are there?", "label": ["4"], "human_or_machine": 0},
    {"query": "What percentage is shown for 2019?", "label": ["63%"], "human_or_machine": 1},
]


def chartqa(root: Path) -> tuple[Path, list[dict]]:
    """HuggingFaceM4/ChartQA: image, query, label (list), human_or_machine; hub-style data/test-*.parquet."""
    features = datasets.Features({"image": datasets.Image(), "query": datasets.Value("string"), "label": STRINGS,
                                  "human_or_machine": datasets.ClassLabel(names=["human", "machine"])})
    rows = [{"image": picture(r["query"]), **r} for r in CHARTQA_ROWS]
    _parquet(rows, features, root / "data", "test")
    return root, rows


def docvqa(root: Path) -> tuple[Path, list[dict]]:
    """lmms-lab/DocVQA (config DocVQA): questionId, question, image, answers, ...; save_to_disk."""
    features = datasets.Features({
        "questionId": datasets.Value("string"), "question": datasets.Value("string"),
        "question_types": STRINGS, "image": datasets.Image(), "docId": datasets.Value("int64"),
        "ucsf_document_id": datasets.Value("string"), "ucsf_document_page_no": datasets.Value("string"),
        "answers": STRINGS, "data_split": datasets.Value("string")})
    qa = [("What is the date on the letter?", ["May 3, 1994", "3 May 1994"]),
          ("Who signed the memo?", ["J. Smith"]), ("What is the total amount?", ["$1,250.00", "1250"]),
          ("What is the title of the report?", ["Annual Review"])]
    rows = [{"questionId": str(50000 + i), "question": q, "question_types": ["form"], "image": picture(q, (400, 520)),
             "docId": 900 + i, "ucsf_document_id": f"xyz{i}", "ucsf_document_page_no": "1", "answers": a,
             "data_split": "val"} for i, (q, a) in enumerate(qa)]
    datasets.DatasetDict({"validation": datasets.Dataset.from_list(rows, features=features)}).save_to_disk(str(root))
    return root, rows


def textvqa(root: Path) -> tuple[Path, list[dict]]:
    """lmms-lab/textvqa: question_id, question, image, answers (ten), ocr_tokens, ...; data/validation-*.parquet.

    Returns the glob of the parquet files as the path (the files way of pointing at data).
    """
    features = datasets.Features({
        "image_id": datasets.Value("string"), "question_id": datasets.Value("int32"),
        "question": datasets.Value("string"), "question_tokens": STRINGS, "image": datasets.Image(),
        "image_width": datasets.Value("int32"), "image_height": datasets.Value("int32"),
        "flickr_original_url": datasets.Value("string"), "flickr_300k_url": datasets.Value("string"),
        "answers": STRINGS, "image_classes": STRINGS, "set_name": datasets.Value("string"), "ocr_tokens": STRINGS})
    qa = [("what brand is the drink?", ["coca cola"] * 7 + ["coke"] * 3),
          ("what number is on the jersey?", ["23"] * 9 + ["twenty three"]),
          ("what does the sign say?", ["stop"] * 10),
          ("what time is on the clock?", ["10:10"] * 6 + ["ten past ten"] * 4)]
    rows = [{"image_id": f"img{i}", "question_id": 34602 + i, "question": q, "question_tokens": q.split(),
             "image": picture(q), "image_width": 320, "image_height": 200, "flickr_original_url": "",
             "flickr_300k_url": "", "answers": a, "image_classes": ["Sign"], "set_name": "val",
             "ocr_tokens": a[0].split()} for i, (q, a) in enumerate(qa)]
    _parquet(rows, features, root / "data", "validation")
    return root / "data" / "validation-*.parquet", rows


def coco_captions(root: Path) -> tuple[Path, list[dict]]:
    """lmms-lab/COCO-Caption2017: question_id, image, question, answer (five captions), ...; save_to_disk."""
    features = datasets.Features({
        "question_id": datasets.Value("string"), "image": datasets.Image(), "question": datasets.Value("string"),
        "answer": STRINGS, "id": datasets.Value("int64"), "license": datasets.Value("int8"),
        "file_name": datasets.Value("string"), "coco_url": datasets.Value("string"),
        "height": datasets.Value("int32"), "width": datasets.Value("int32"), "date_captured": datasets.Value("string")})
    captions = [
        ["a red bus drives down a city street", "a double decker bus on the road", "a bus parked near a curb",
         "a large red bus in traffic", "a city bus driving past buildings"],
        ["a cat sleeping on a sofa", "a grey cat curled up on a couch", "a cat lying on cushions",
         "a sleeping cat on a living room sofa", "a small cat resting on a couch"],
        ["two people riding bikes on a trail", "cyclists on a dirt path in the woods", "two bikers in a forest",
         "people cycling along a trail", "two mountain bikers riding through trees"],
        ["a plate of pasta with tomato sauce", "spaghetti on a white plate", "a bowl of pasta and sauce",
         "a dish of noodles with red sauce", "pasta served on a plate"],
    ]
    rows = [{"question_id": f"{139 + i:012d}.jpg", "image": picture(c[0], (640, 480)),
             "question": "Please carefully observe the image and come up with a caption for the image.",
             "answer": c, "id": 139 + i, "license": 2, "file_name": f"{139 + i:012d}.jpg", "coco_url": "",
             "height": 480, "width": 640, "date_captured": "2013-11-14"} for i, c in enumerate(captions)]
    datasets.DatasetDict({"val": datasets.Dataset.from_list(rows, features=features)}).save_to_disk(str(root))
    return root, rows


def mmmu(root: Path) -> tuple[Path, list[dict]]:
    """lmms-lab/MMMU: id, question, options (a list's repr), image_1..image_7, answer (letter), ...

    Rows 0-2 are single-image multiple choice; row 3 has two images and row 4 is open-ended:
    the workload must skip those two.
    """
    columns = {"id": "string", "question": "string", "options": "string", "explanation": "string",
               **{f"image_{k}": None for k in range(1, 8)}, "img_type": "string", "answer": "string",
               "topic_difficulty": "string", "question_type": "string", "subfield": "string"}
    features = datasets.Features({k: datasets.Image() if v is None else datasets.Value(v) for k, v in columns.items()})
    specs = [
        ("validation_Art_1", "Which style is shown in <image 1>?", "['Baroque', 'Cubism', 'Impressionism']", "B", 1,
         "multiple-choice"),
        ("validation_Math_2", "What is the area of the shape in <image 1>?", "['12', '16', '24', '32']", "C", 1,
         "multiple-choice"),
        ("validation_Physics_3", "Which force in <image 1> is largest?", "['F1', 'F2']", "A", 1, "multiple-choice"),
        ("validation_Art_4", "Compare <image 1> and <image 2>.", "['Same', 'Different']", "B", 2, "multiple-choice"),
        ("validation_Math_5", "Compute the slope in <image 1>.", "[]", "2.5", 1, "open"),
    ]
    rows = []
    for rid, question, options, answer, n_images, kind in specs:
        images = {f"image_{k}": picture(question) if k <= n_images else None for k in range(1, 8)}
        rows.append({"id": rid, "question": question, "options": options, "explanation": "", **images,
                     "img_type": "['Diagrams']", "answer": answer, "topic_difficulty": "Easy",
                     "question_type": kind, "subfield": rid.split("_")[1]})
    _parquet(rows, features, root / "data", "validation")
    return root, rows


TASKS = {"chartqa": chartqa, "docvqa": docvqa, "textvqa": textvqa, "coco_captions": coco_captions, "mmmu": mmmu}
