"""Synthetic spine radiographs with VinDr-SpineXR labels, for a demo bundle anyone can rebuild.

VinDr-SpineXR is credentialed-access data, so the project trains and checks
its demo models on phantoms: lateral and AP lumbar spines (vertebral bodies
with cortical endplates, disc spaces, posterior elements and foramina,
sacrum, soft tissue, noise, blur) carrying the seven VinDr lesion classes
where they occur.  Files and CSV follow the real dataset layout, and the DICOMs
mix the encodings a real archive holds (12-bit, MONOCHROME1/2, explicit VR,
JPEG 2000 lossless, RLE, with and without a window).

A phantom is a `PhantomSpec` (every random choice, made once by
`sample_phantom`) rendered by the pure function `render_spec`.  Each lesion's
box is the bounding box of exactly the pixels the lesion changes, found by
rasterising the scene with and without it.  Everything is a function of
(seed, split, index), so a set is reproducible byte for byte and can be built
in parallel.

The modules, in the order a phantom is made: `spec` (the random choices),
`geometry` (body frame, sub-pixel masks), `anatomy` (normal bones), `lesions`
(what each class draws, and its box), `image` (masks -> 12-bit radiograph),
`files` (DICOM + CSV sets on disk).
"""

from training.phantoms.files import (
    ENCODINGS,
    PhantomItem,
    generate_phantoms,
    phantom_dataset,
    phantom_item,
)
from training.phantoms.image import compose, render_phantom, render_spec
from training.phantoms.lesions import lesion_boxes, rasterize
from training.phantoms.spec import (
    AP,
    LATERAL,
    LATERAL_ONLY,
    MAX_VALUE,
    Lesion,
    PhantomSpec,
    Vertebra,
    sample_phantom,
)

__all__ = [
    "AP",
    "ENCODINGS",
    "LATERAL",
    "LATERAL_ONLY",
    "MAX_VALUE",
    "Lesion",
    "PhantomItem",
    "PhantomSpec",
    "Vertebra",
    "compose",
    "generate_phantoms",
    "lesion_boxes",
    "phantom_dataset",
    "phantom_item",
    "rasterize",
    "render_phantom",
    "render_spec",
    "sample_phantom",
]
