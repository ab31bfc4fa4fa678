import os
from pathlib import Path

import numpy as np
import pytest
import torch

# Small tensors everywhere: one thread is as fast, and immune to a busy second core.
torch.set_num_threads(int(os.environ.get("FER_EDGE_TORCH_THREADS", "1")))

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests" / "data" / "golden"
BLOCK = REPO / "tests" / "data" / "vss_block"
MAIN_MODEL = REPO / "models" / "fer-yolo-mamba-nano.onnx"
SAMPLE = REPO / "samples" / "obama.jpg"


@pytest.fixture(scope="session")
def exported_nano():
    """nano, placeholder weights calibrated at 64x64, exported at 64x64 (ONNX contract
    version 3, the default): (torch, onnx)."""
    from fer_edge_training.export import build, export_model

    model = build("nano", seed=3, size=64)
    return model, export_model(model, 64)


@pytest.fixture(scope="session")
def exported_nano_v2(exported_nano):
    """The same model exported in ONNX contract version 2: (torch, onnx)."""
    from fer_edge_training.export import export_model

    model = exported_nano[0]
    return model, export_model(model, 64, scan_op_version=2)


@pytest.fixture(scope="session")
def exported_nano_v1(exported_nano):
    """The same model exported in ONNX contract version 1: (torch, onnx)."""
    from fer_edge_training.export import export_model

    model = exported_nano[0]
    return model, export_model(model, 64, scan_op_version=1)


@pytest.fixture(scope="session")
def exported_nano_at(request):
    """``exported_nano_at(version)``: the fixture above of that ONNX contract version
    (built on first use)."""
    names = {3: "exported_nano", 2: "exported_nano_v2", 1: "exported_nano_v1"}
    return lambda version: request.getfixturevalue(names[version])


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """Small copies of the training sources' layouts, made from the repository's two
    public-domain portraits (``samples/``), so the loaders and the training command run
    without ``../shared``:

    * ``lfw/images/<Name>/<Name>_000k.jpg``: 150x150 colour crops around each face (three
      each, mirrored and shifted) and one photo with both people; ``lfw_boxes.csv``: every
      face MTCNN finds in them (the CLI of ``mtcnn --all-faces``);
    * ``fe/``: ``facial_expressions``' layout labelling them (``data/legend.csv``, grey
      copies in ``images/``), and ``splits/`` with the two people in train and val;
    * ``ferplus/``: ``fer2013new.csv`` and 48x48 grey faces in the three split folders,
      with a row without an image, a mostly-unknown row, a contempt row and a test image
      that is a byte copy of a training image.
    """
    from PIL import Image, ImageOps

    from fer_edge_training.mtcnn import detect_faces, run

    root = tmp_path_factory.mktemp("tiny")
    people = {
        "Barack_Obama": REPO / "samples" / "obama.jpg",
        "Joe_Biden": REPO / "samples" / "biden.jpg",
    }
    labels = {
        "Barack_Obama": ("happiness", "neutral", "happiness"),
        "Joe_Biden": ("happiness", "surprise", "neutral"),
    }
    faces = {}
    for name, path in people.items():
        image = Image.open(path).convert("RGB")
        x1, y1, x2, y2, _ = detect_faces(np.asarray(image))[0]
        faces[name] = image.crop((int(x1), int(y1), int(x2), int(y2)))
        side = 2.5 * (x2 - x1)
        for k in range(3):
            cx, cy = (x1 + x2) / 2 + 6 * k, (y1 + y2) / 2 - 4 * k
            photo = image.crop(
                (int(cx - side / 2), int(cy - side / 2), int(cx + side / 2), int(cy + side / 2))
            )
            photo = photo.resize((150, 150), Image.BILINEAR)
            if k == 1:
                photo = ImageOps.mirror(photo)
            folder = root / "lfw" / "images" / name
            folder.mkdir(parents=True, exist_ok=True)
            photo.save(folder / f"{name}_{k + 1:04d}.jpg", quality=92)
    both = Image.new("RGB", (150, 150), (90, 110, 130))
    for i, name in enumerate(people):
        both.paste(faces[name].resize((60, 75)), (8 + 75 * i, 35))
    (root / "lfw" / "images" / "Two_People").mkdir()
    both.save(root / "lfw" / "images" / "Two_People" / "Two_People_0001.jpg", quality=92)
    run(root / "lfw", root / "lfw_boxes.csv", pattern="*/*.jpg", all_faces=True)

    (root / "fe" / "data").mkdir(parents=True)
    (root / "fe" / "images").mkdir()
    rows = ["user.id,image,emotion"]
    for name, emotions in labels.items():
        for k, emotion in enumerate(emotions):
            file = f"{name}_{k + 1:04d}.jpg"
            Image.open(root / "lfw" / "images" / name / file).convert("L").save(
                root / "fe" / "images" / file
            )
            rows.append(f"tester,{file},{emotion}")
    (root / "fe" / "data" / "legend.csv").write_text("\n".join(rows) + "\n")
    (root / "splits").mkdir()
    (root / "splits" / "train.txt").write_text("images/Barack_Obama_0001.jpg 3\n")
    (root / "splits" / "val.txt").write_text("images/Joe_Biden_0001.jpg 3\n")
    (root / "splits" / "test.txt").write_text("")

    fp = root / "ferplus"
    # name: (usage, then the votes of the columns in the header below)
    votes = {
        "fer0000000.png": ("Training", 0, 8, 1, 0, 0, 0, 0, 0, 1, 0),
        "fer0000001.png": ("Training", 6, 0, 0, 3, 0, 0, 0, 0, 1, 0),
        "fer0000002.png": ("Training", 0, 0, 0, 0, 1, 0, 3, 0, 6, 0),
        "fer0000003.png": ("Training", 1, 0, 0, 0, 2, 0, 0, 7, 0, 0),
        "fer0000004.png": ("PublicTest", 0, 0, 9, 0, 0, 0, 1, 0, 0, 0),
        "fer0000005.png": ("PrivateTest", 0, 8, 1, 0, 0, 0, 0, 0, 1, 0),
        "fer0000006.png": ("PrivateTest", 3, 0, 0, 4, 3, 0, 0, 0, 0, 0),
        "": ("Training", 10, 0, 0, 0, 0, 0, 0, 0, 0, 0),
    }
    folders = {
        "Training": "FER2013Train",
        "PublicTest": "FER2013Valid",
        "PrivateTest": "FER2013Test",
    }
    lines = [
        "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF"
    ]
    for i, (file, (usage, *counts)) in enumerate(votes.items()):
        lines.append(",".join([usage, file, *map(str, counts)]))
        if not file:
            continue
        folder = fp / folders[usage]
        folder.mkdir(parents=True, exist_ok=True)
        face = faces["Barack_Obama" if i % 2 else "Joe_Biden"].convert("L").resize((48, 48))
        face = ImageOps.mirror(face) if i in (2, 3) else face.rotate(3 * i)
        if file == "fer0000005.png":  # a byte copy of a training picture
            (original,) = (fp / "FER2013Train").glob("fer0000000.*")
            (folder / file).with_suffix(original.suffix).write_bytes(original.read_bytes())
        elif i % 2:
            face.save(folder / file)
        else:
            face.save((folder / file).with_suffix(".jpg"), quality=92)
    (fp / "fer2013new.csv").write_text("\n".join(lines) + "\n")
    return root
