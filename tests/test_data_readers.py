"""Readers for public dataset layouts, on tiny files written in those layouts."""
import json
import os
import pickle

import pytest

from lion_ros.api import TaskKind
from lion_ros.data.readers import (
    DatasetFormatError,
    read_aokvqa,
    read_coco_captions,
    read_gqa,
    read_okvqa,
    read_refcoco,
    read_visual_genome,
    read_vqav2,
    read_vsr,
    safe_load_pickle,
)
from lion_ros.data.sample import SampleDataset


def _write_json(path, data):
    path.write_text(json.dumps(data))
    return str(path)


COCO_CAPTIONS = {
    "info": {"description": "COCO 2014 Dataset", "year": 2014},
    "images": [
        {"license": 3, "file_name": "COCO_val2014_000000391895.jpg", "coco_url": "http://x", "height": 360,
         "width": 640, "date_captured": "2013-11-14 11:18:45", "flickr_url": "http://y", "id": 391895},
        {"license": 4, "file_name": "COCO_val2014_000000522418.jpg", "coco_url": "http://x", "height": 480,
         "width": 640, "date_captured": "2013-11-14 11:38:44", "flickr_url": "http://y", "id": 522418},
    ],
    "licenses": [{"url": "http://z", "id": 1, "name": "Attribution"}],
    "annotations": [
        {"image_id": 391895, "id": 770337, "caption": "A man with a red helmet on a small moped on a dirt road. "},
        {"image_id": 391895, "id": 771687, "caption": "Man riding a motor bike on a dirt road on the countryside."},
        {"image_id": 522418, "id": 772218, "caption": "A woman wearing a net on her head cutting a cake. "},
    ],
}


def test_coco_captions_per_caption_and_per_image(tmp_path):
    path = _write_json(tmp_path / "captions_val2014.json", COCO_CAPTIONS)
    ds = read_coco_captions(path, image_root="/data/coco/val2014")
    assert isinstance(ds, SampleDataset) and len(ds) == 3
    s = ds[0]
    assert s.task == TaskKind.IMAGE and s.task_name == "caption" and s.split == "val2014"
    assert s.answer == "A man with a red helmet on a small moped on a dirt road."
    assert s.question == "Please describe the image using a single short sentence."
    assert s.image_path == "/data/coco/val2014/COCO_val2014_000000391895.jpg"
    assert s.image_size == (640, 360)
    per_image = read_coco_captions(path, per_image=True, split="karpathy_test")
    assert len(per_image) == 2 and per_image[0].split == "karpathy_test"
    assert len(per_image[0].answers) == 2
    assert per_image[1].answers == ["A woman wearing a net on her head cutting a cake."]


def test_coco_captions_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="COCO captions file not found"):
        read_coco_captions(str(tmp_path / "captions_train2014.json"))
    bad = tmp_path / "captions_bad.json"
    bad.write_text("{not json")
    with pytest.raises(DatasetFormatError, match="not valid JSON"):
        read_coco_captions(str(bad))
    missing = _write_json(tmp_path / "captions_x.json", {"images": []})
    with pytest.raises(DatasetFormatError, match="missing key 'annotations'"):
        read_coco_captions(missing)
    dangling = dict(COCO_CAPTIONS, annotations=[{"image_id": 1, "id": 5, "caption": "x"}])
    with pytest.raises(DatasetFormatError, match="unknown image 1"):
        read_coco_captions(_write_json(tmp_path / "captions_y.json", dangling))


VQA_QUESTIONS = {
    "info": {"description": "This is v2.0 of the VQA dataset."}, "task_type": "Open-Ended", "data_type": "mscoco",
    "license": {"url": "http://creativecommons.org/licenses/by/4.0/", "name": "CC BY 4.0"}, "data_subtype": "val2014",
    "questions": [
        {"image_id": 262148, "question": "Where is he looking?", "question_id": 262148000},
        {"image_id": 262148, "question": "Is he skateboarding?", "question_id": 262148001},
    ],
}


def _answers(words):
    return [{"answer": w, "answer_confidence": "yes", "answer_id": i + 1} for i, w in enumerate(words)]


VQA_ANNOTATIONS = {
    "info": {}, "license": {}, "data_subtype": "val2014", "data_type": "mscoco",
    "annotations": [
        {"question_type": "none of the above", "multiple_choice_answer": "down",
         "answers": _answers(["down"] * 6 + ["at table", "skateboard", "down", "table"]),
         "image_id": 262148, "answer_type": "other", "question_id": 262148000},
        {"question_type": "is he", "multiple_choice_answer": "yes", "answers": _answers(["yes"] * 10),
         "image_id": 262148, "answer_type": "yes/no", "question_id": 262148001},
    ],
}


def test_vqav2(tmp_path):
    q = _write_json(tmp_path / "v2_OpenEnded_mscoco_val2014_questions.json", VQA_QUESTIONS)
    a = _write_json(tmp_path / "v2_mscoco_val2014_annotations.json", VQA_ANNOTATIONS)
    ds = read_vqav2(q, a, image_root="/coco/val2014")
    assert len(ds) == 2
    s0, s1 = ds
    assert s0.id == "vqav2/262148000" and s0.split == "val2014" and s0.task_name == "vqa"
    assert s0.question == "Where is he looking?"  # LION answers plain questions
    assert s0.answer == "down" and len(s0.answers) == 10 and s0.yes_no is None
    assert s0.image_path == "/coco/val2014/COCO_val2014_000000262148.jpg"
    assert s1.answer == "yes" and s1.yes_no is True
    test_only = read_vqav2(q)  # test-dev style: questions without annotations
    assert test_only[0].answers == [] and test_only[0].answer == ""
    varied = read_vqav2(q, a, variety_seed=1)
    assert all("Where is he looking?" in s.question for s in varied[:1])


def test_vqav2_errors(tmp_path):
    q = _write_json(tmp_path / "q.json", VQA_QUESTIONS)
    partial = dict(VQA_ANNOTATIONS, annotations=VQA_ANNOTATIONS["annotations"][:1])
    with pytest.raises(DatasetFormatError, match="no annotation for question 262148001"):
        read_vqav2(q, _write_json(tmp_path / "a.json", partial))
    no_subtype = {k: v for k, v in VQA_QUESTIONS.items() if k != "data_subtype"}
    with pytest.raises(DatasetFormatError, match="missing key 'data_subtype'"):
        read_vqav2(_write_json(tmp_path / "q2.json", no_subtype))
    with pytest.raises(FileNotFoundError, match="vqav2 annotations file not found"):
        read_vqav2(q, str(tmp_path / "missing.json"))


def test_okvqa_uses_vqa_layout(tmp_path):
    questions = dict(VQA_QUESTIONS, data_subtype="train2014",
                     questions=[{"image_id": 51606, "question": "What is the hairstyle of the blond called?",
                                 "question_id": 516065}])
    answers = [{"answer_id": i + 1, "raw_answer": w, "answer_confidence": "yes", "answer": w}
               for i, w in enumerate(["pony tail"] * 4 + ["braid"] * 2 + ["pony tail"] * 4)]
    annotations = {"license": {}, "data_subtype": "train2014", "info": {}, "data_type": "mscoco", "annotations": [
        {"image_id": 51606, "answer_type": "other", "question_type": "four", "question_id": 516065,
         "answers": answers, "confidence": 3}]}
    ds = read_okvqa(_write_json(tmp_path / "OpenEnded_mscoco_train2014_questions.json", questions),
                    _write_json(tmp_path / "mscoco_train2014_annotations.json", annotations))
    assert ds[0].source == "okvqa" and ds[0].answer == "pony tail"  # no multiple_choice_answer: majority
    assert ds[0].image_path == "COCO_train2014_000000051606.jpg"


AOKVQA = [
    {"split": "val", "image_id": 461751, "question_id": "22jbM6gDxdaMaunuzgrsBB",
     "question": "What is in the motorcyclist's mouth?",
     "choices": ["toothpick", "food", "popsicle stick", "cigarette"],
     "correct_choice_idx": 3,
     "direct_answers": ["cigarette"] * 9 + ["smoke"],
     "difficult_direct_answer": False, "rationales": ["He's smoking while riding."]},
    {"split": "test", "image_id": 461752, "question_id": "abc", "question": "What colour is it?",
     "choices": ["red", "blue", "green", "white"], "difficult_direct_answer": False},
]


def test_aokvqa(tmp_path):
    ds = read_aokvqa(_write_json(tmp_path / "aokvqa_v1p0_val.json", AOKVQA), image_root="/coco/val2017")
    s = ds[0]
    assert s.answer == "cigarette" and len(s.answers) == 10 and s.choices[3] == "cigarette" and s.split == "val"
    assert s.image_path == "/coco/val2017/000000461751.jpg"
    assert ds[1].answers == [] and ds[1].answer == "" and ds[1].split == "test"
    bad = [dict(AOKVQA[0], correct_choice_idx=7)]
    with pytest.raises(DatasetFormatError, match="correct_choice_idx 7 out of range"):
        read_aokvqa(_write_json(tmp_path / "bad.json", bad))
    with pytest.raises(DatasetFormatError, match="expected a list"):
        read_aokvqa(_write_json(tmp_path / "bad2.json", {"questions": AOKVQA}))


GQA = {
    "201307251": {
        "semantic": [{"operation": "select", "dependencies": [], "argument": "weather"}],
        "entailed": [], "equivalent": ["201307251"], "question": "Is it overcast?", "imageId": "n161313",
        "isBalanced": True, "groups": {"global": None, "local": "06-weather_overcast"}, "answer": "no",
        "semanticStr": "select: weather ->verify weather: overcast",
        "annotations": {"answer": {}, "question": {}, "fullAnswer": {}},
        "types": {"detailed": "weatherVerify", "semantic": "attr", "structural": "verify"},
        "fullAnswer": "No, it is clear.",
    },
    "201640614": {"question": "Who is wearing the dress?", "imageId": "n235859", "answer": "woman",
                  "fullAnswer": "The woman is wearing a dress.", "isBalanced": True},
}


def test_gqa(tmp_path):
    ds = read_gqa(_write_json(tmp_path / "testdev_balanced_questions.json", GQA), split="testdev",
                  image_root="/gqa/images")
    assert len(ds) == 2
    assert ds[0].id == "gqa/201307251" and ds[0].answer == "no" and ds[0].yes_no is False
    assert ds[0].image_path == "/gqa/images/n161313.jpg" and ds[0].split == "testdev"
    assert ds[1].answers == ["woman"] and ds[1].yes_no is None
    with pytest.raises(DatasetFormatError, match="missing key 'imageId' in question 1"):
        read_gqa(_write_json(tmp_path / "bad.json", {"1": {"question": "q"}}), split="val")
    with pytest.raises(DatasetFormatError, match="keyed by question id"):
        read_gqa(_write_json(tmp_path / "bad2.json", [1, 2]), split="val")


def test_vsr(tmp_path):
    lines = [
        {"image": "000000050403.jpg", "image_link": "http://images.cocodataset.org/train2017/000000050403.jpg",
         "caption": "The teddy bear is in front of the person.", "label": 1, "relation": "in front of",
         "annotator_id": 31, "vote_true_validator_id": [2, 6], "vote_false_validator_id": []},
        {"image": "000000158475.jpg", "image_link": "http://images.cocodataset.org/train2017/000000158475.jpg",
         "caption": "The cat is left of the dog.", "label": 0, "relation": "left of",
         "annotator_id": 2, "vote_true_validator_id": [], "vote_false_validator_id": [1]},
    ]
    path = tmp_path / "test.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in lines) + "\n\n")
    ds = read_vsr(str(path), split="test", image_root="/coco/images")
    assert [s.answer for s in ds] == ["yes", "no"] and [s.yes_no for s in ds] == [True, False]
    assert ds[0].task_name == "yesno" and "The teddy bear is in front of the person." in ds[0].question
    assert ds[0].image_path == "/coco/images/000000050403.jpg" and ds[0].tags == ["in front of"]
    path.write_text(json.dumps(dict(lines[0], label=2)) + "\n")
    with pytest.raises(DatasetFormatError, match=r"test.jsonl:1: label must be 0 or 1"):
        read_vsr(str(path), split="test")
    path.write_text("{oops\n")
    with pytest.raises(DatasetFormatError, match="not valid JSON"):
        read_vsr(str(path), split="test")


REFS = [
    {"sent_ids": [0, 1], "file_name": "COCO_train2014_000000581857_16.jpg", "ann_id": 1719310, "ref_id": 0,
     "image_id": 581857, "split": "train", "category_id": 1,
     "sentences": [
         {"tokens": ["the", "lady", "with", "the", "blue", "shirt"], "raw": "THE LADY WITH THE BLUE SHIRT",
          "sent_id": 0, "sent": "the lady with the blue shirt"},
         {"tokens": ["lady", "w", "back", "to", "us"], "raw": "lady w back to us", "sent_id": 1,
          "sent": "lady w back to us"},
     ]},
    {"sent_ids": [2], "file_name": "COCO_train2014_000000581857_17.jpg", "ann_id": 1719311, "ref_id": 1,
     "image_id": 581857, "split": "testA", "category_id": 1,
     "sentences": [{"tokens": ["man", "left"], "raw": "man left", "sent_id": 2, "sent": "man left"}]},
]
INSTANCES = {
    "info": {}, "licenses": [], "categories": [{"supercategory": "person", "id": 1, "name": "person"}],
    "images": [{"license": 1, "file_name": "COCO_train2014_000000581857.jpg", "coco_url": "", "height": 400,
                "width": 500, "date_captured": "", "flickr_url": "", "id": 581857}],
    "annotations": [
        {"segmentation": [[0, 0, 1, 1]], "area": 100.0, "iscrowd": 0, "image_id": 581857,
         "bbox": [100.0, 40.0, 200.0, 300.0], "category_id": 1, "id": 1719310},
        {"segmentation": [[0, 0, 1, 1]], "area": 100.0, "iscrowd": 0, "image_id": 581857,
         "bbox": [0.0, 0.0, 50.0, 400.0], "category_id": 1, "id": 1719311},
    ],
}


def test_refcoco_rec_and_reg(tmp_path):
    refs = tmp_path / "refs(unc).p"
    refs.write_bytes(pickle.dumps(REFS, protocol=2))
    inst = _write_json(tmp_path / "instances.json", INSTANCES)
    ds = read_refcoco(str(refs), inst, "refcoco", split="train", image_root="/coco/train2014")
    assert len(ds) == 2
    s = ds[0]
    assert s.task == TaskKind.REGION and s.task_name == "rec" and s.source == "refcoco" and s.split == "train"
    assert s.question == ("In the image <image>, can you locate the lady with the blue shirt and let me know its "
                          "coordinates?")
    # xywh [100, 40, 200, 300] in a 500x400 image -> xyxy [0.2, 0.1, 0.6, 0.85]
    assert s.answer == "Answer: [0.200,0.100,0.600,0.850]"
    assert s.regions[0].box == (0.2, 0.1, 0.6, 0.85)
    assert s.image_path == "/coco/train2014/COCO_train2014_000000581857.jpg" and s.image_size == (500, 400)
    assert s.id == "refcoco/0/0"
    test_a = read_refcoco(str(refs), inst, "refcoco", split="testA", task="reg")
    assert len(test_a) == 1 and test_a[0].answer == "man left"
    assert "[0.000,0.000,0.100,1.000]" in test_a[0].question
    assert len(read_refcoco(str(refs), inst, "refcoco")) == 3  # all splits
    with pytest.raises(ValueError, match="refcocog has no split 'testA'"):
        read_refcoco(str(refs), inst, "refcocog", split="testA")
    missing_ann = dict(INSTANCES, annotations=INSTANCES["annotations"][1:])
    with pytest.raises(DatasetFormatError, match="no annotation 1719310"):
        read_refcoco(str(refs), _write_json(tmp_path / "i2.json", missing_ann), "refcoco")


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_refcoco_pickle_is_restricted(tmp_path):
    evil = tmp_path / "refs(unc).p"
    evil.write_bytes(pickle.dumps([_Evil()], protocol=2))
    with pytest.raises(pickle.UnpicklingError, match=r"refusing to load (posix|nt|os)\.system"):
        safe_load_pickle(str(evil))
    evil.write_bytes(pickle.dumps(eval, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match=r"(__builtin__|builtins)\.eval"):
        safe_load_pickle(str(evil))
    with pytest.raises(FileNotFoundError, match="pickle file not found"):
        safe_load_pickle(str(tmp_path / "refs(umd).p"))


def test_python2_pickle_strings_decode_as_utf8(tmp_path):
    # Protocol 2 as written by Python 2: SHORT_BINSTRING ('U') byte strings holding UTF-8.
    raw = b"\x80\x02}q\x00U\x04sentq\x01U\x05caf\xc3\xa9q\x02s."
    path = tmp_path / "refs(umd).p"
    path.write_bytes(raw)
    assert safe_load_pickle(str(path)) == {"sent": "caf\u00e9"}


def test_visual_genome(tmp_path):
    regions = [{"regions": [
        {"region_id": 1382, "width": 82, "height": 139, "image_id": 1, "phrase": "the clock is green in colour",
         "y": 57, "x": 421},
        {"region_id": 1383, "width": 800, "height": 700, "image_id": 1, "phrase": "whole street", "y": 0, "x": 0},
    ], "id": 1}]
    image_data = [{"width": 800, "url": "https://cs.stanford.edu/people/rak248/VG_100K_2/1.jpg", "height": 600,
                   "image_id": 1, "coco_id": None, "flickr_id": None}]
    r = _write_json(tmp_path / "region_descriptions.json", regions)
    i = _write_json(tmp_path / "image_data.json", image_data)
    ds = read_visual_genome(r, i, image_root="/vg")
    assert len(ds) == 2
    s = ds[0]
    assert s.task_name == "reg" and s.answer == "the clock is green in colour"
    # [421, 57, 82, 139] in 800x600 -> [0.52625, 0.095, 0.62875, 0.326666]
    assert s.regions[0].box == (0.526, 0.095, 0.629, 0.327)
    assert "[0.526,0.095,0.629,0.327]" in s.question
    assert s.image_path == "/vg/VG_100K_2/1.jpg" and s.image_size == (800, 600)
    assert ds[1].regions[0].box == (0.0, 0.0, 1.0, 1.0)  # clamped to the image
    rec = read_visual_genome(r, i, task="rec")
    assert rec[0].answer == "Answer: [0.526,0.095,0.629,0.327]"
    with pytest.raises(DatasetFormatError, match="no image 1"):
        read_visual_genome(r, _write_json(tmp_path / "img2.json", []))
    bad_region = [{"regions": [{"region_id": 1, "phrase": "x", "x": 0, "y": 0, "width": 1}], "id": 1}]
    with pytest.raises(DatasetFormatError, match="missing key 'height'"):
        read_visual_genome(_write_json(tmp_path / "r2.json", bad_region), i)
