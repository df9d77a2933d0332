"""``cnncompress predict MODEL IMAGE...``: faces found -> emotion and probability per face."""
from __future__ import annotations

import json


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("predict", help="find faces in photos and predict the emotion of each")
    parser.add_argument("model", help="fer-minixception, a .ccz, a model.safetensors from `train`, or a run folder")
    parser.add_argument("images", nargs="+", help="image files (png, jpg, ...)")
    parser.add_argument("--json", action="store_true", help="one JSON object per image")
    parser.add_argument("--whole-image", action="store_true", help="classify the whole image when no face is found")
    parser.add_argument("--top", type=int, default=1, help="also list the top-k classes")
    parser.set_defaults(func=run)


def run(args) -> int:
    from .. import methods
    from ..loading import load_model
    from ..predict import predict_image
    model = methods.to_inference(load_model(args.model))
    for image in args.images:
        faces = predict_image(model, image, whole_image=args.whole_image, top=args.top)
        if args.json:
            print(json.dumps({"image": image, "faces": faces}))
            continue
        print(f"{image}: {len(faces)} face(s)")
        for face in faces:
            r, c, h, w = face["box"]
            extra = ", ".join(f"{name} {p:.2f}" for name, p in face["top"][1:])
            print(f"  box row={r} col={c} h={h} w={w}: {face['emotion']} {face['probability']:.2f}"
                  + (f" (then {extra})" if extra else ""))
    return 0
