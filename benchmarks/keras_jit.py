"""Which of Keras's image augmentation layers keep a model XLA-compiled.

    python -m benchmarks.keras_jit

Each layer goes into a small model compiled with ``jit_compile=True``; Keras turns XLA off for
the whole model (``model.jit_compile`` reads False) when a layer says ``supports_jit = False``.
The answer decides what regsearch can use as is: a layer that turns XLA off would slow every
trial of a study, so `trainers.augment.RandomAugment` does its own flips, rotation, shear,
translation and zoom in plain ``keras.ops``, and there is no TrivialAugment-style baseline
(Keras's RandAugment and AugMix turn XLA off).

Writes benchmarks/results/keras-jit-layers.{json,md} (or under $BENCH_OUT).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# the arguments each layer needs (the rest take none)
ARGUMENTS = {
    "RandomBrightness": (0.2,), "RandomContrast": (0.2,), "RandomCrop": (28, 28),
    "RandomRotation": (0.1,), "RandomTranslation": (0.1, 0.1), "RandomZoom": (0.1,),
    "RandomShear": (0.1, 0.1), "RandomPosterization": (4,), "RandomHue": (0.1, (0, 1)),
    "RandomSaturation": (0.2,), "RandomSharpness": (0.2,), "RandomColorDegeneration": (0.2,),
    "RandomGaussianBlur": (0.2,), "RandomInvert": (0.5,), "Solarization": (0.5,),
    "RandomGrayscale": (0.5,), "Resizing": (28, 28), "CenterCrop": (28, 28),
}


def main() -> None:
    import keras
    from keras.src.layers.preprocessing.image_preprocessing.base_image_preprocessing_layer import (  # noqa: E501
        BaseImagePreprocessingLayer,
    )

    from benchmarks._common import machine, machine_table, write_result

    rows = []
    for name in sorted(dir(keras.layers)):
        cls = getattr(keras.layers, name)
        if not (isinstance(cls, type) and issubclass(cls, BaseImagePreprocessingLayer)) \
                or name == "MaxNumBoundingBoxes":  # pads bounding boxes, no image operation
            continue
        try:
            layer = cls(*ARGUMENTS.get(name, ()))
            inputs = keras.Input((32, 32, 3))
            outputs = keras.layers.Dense(2)(keras.layers.Flatten()(layer(inputs)))
            model = keras.Model(inputs, outputs)
            model.compile("adam", "mse", jit_compile=True)
            rows.append({"layer": name, "jit_compile": bool(model.jit_compile)})
        except Exception as exc:  # noqa: BLE001 (a layer that needs other inputs: said so)
            rows.append({"layer": name, "jit_compile": None, "error": f"{type(exc).__name__}"})
        print(rows[-1], flush=True)
    info = machine()
    off = [r["layer"] for r in rows if r["jit_compile"] is False]
    lines = ["# Keras image augmentation layers and XLA", "",
             "`python -m benchmarks.keras_jit`: each layer in a small model compiled with "
             "`jit_compile=True`; the column is what `model.jit_compile` reads afterwards.", "",
             "| layer | model stays jit-compiled |", "| --- | --- |"]
    lines += [f"| {r['layer']} | {'yes' if r['jit_compile'] else 'no' if r['jit_compile'] is False else r.get('error')} |"
              for r in rows]
    lines += ["", f"Turn XLA off for the whole model: {', '.join(off)}.", "",
              machine_table(info)]
    md = "\n".join(lines) + "\n"
    print(md)
    print(f"written: {write_result('keras-jit-layers', {'rows': rows, 'machine': info}, md)}")


if __name__ == "__main__":
    main()
