"""The rows and settings of ``table-emotion`` (``emotion_table`` runs them).

A row is ``(label, pipeline, recover)``: the pipeline's steps are ``(method, config)`` pairs applied in order to a
copy of ``fer-minixception`` (``methods.apply``), plus steps that are not compression methods and that
``emotion_table.run_row`` handles itself: ``optimize`` (per-layer settings for a byte budget), ``fold-bn``,
``norms-as-affine`` (after recovery), ``moving-indices`` and ``hints`` (how the copy recovers). ``recover``: the
copy is distilled from the original on unlabelled faces. ``FULL`` / ``QUICK``: the table's settings (every row
of one table shares them; an ``--out`` made with others is refused).
"""
from __future__ import annotations

LARGEST_CONVS = ["features.block4.sep2.pointwise", "features.block4.shortcut",  # 32,768 of the 55,472 conv
                 "features.block4.sep1.pointwise"]                            # weights (59 %)
SENSITIVE_CONVS = ["features.conv1", "features.conv2", "features.block*.sep*.depthwise"]  # 3,888 weights: 6-bit
# k-means on the stem (or the depthwise convs) alone raised agreement before recovery on the selection set by 3.5
# (7) points over the 3/4-bit mix; on the classifier conv it gained nothing, so that one takes 3 bits to pay
HINT_POINTS = ["features.relu2", "features.block1", "features.block2", "features.block3",  # the stem's output
               "features.block4"]                                                      # and each block's
ROWS = (  # label, [(method, config)], recover by distillation; "norms-as-affine" is applied after recovery
    ("fp16", [("fp16", {})], False),
    ("int8 (calibrated on the unlabelled faces)", [("int8", {})], False),
    ("k-means 4-bit + Huffman", [("kmeans", {"conv_bits": 4, "coding": "huffman"})], True),
    ("k-means 3-bit + Huffman, fp16 rest", [("kmeans", {"conv_bits": 3, "coding": "huffman"}), ("fp16", {})], True),
    ("k-means 2-bit + Huffman, fp16 rest", [("kmeans", {"conv_bits": 2, "coding": "huffman"}), ("fp16", {})], True),
    ("magnitude pruning 75 %", [("prune-magnitude", {"sparsity": 0.75})], True),
    ("BWN (binary weights)", [("bwn", {})], True),
    ("HashedNets 1/8", [("hashed", {"compression": 0.125})], True),
    ("deep compression (conv 90 %, 4 bits), fp16 rest", [("deep-compression", {"conv_sparsity": 0.9, "conv_bits": 4}),
                                                         ("fp16", {})], True),
    ("k-means 4-bit + Huffman, fp16 rest", [("kmeans", {"conv_bits": 4, "coding": "huffman"}), ("fp16", {})], True),
    ("optimize 1/8: pruning + k-means bits per layer by sensitivity, fp16 rest",
     [("optimize", {"max_bytes": "1/8", "fp16_rest": True})], True),
    ("k-means 4-bit + Huffman, BatchNorms as affine, fp16 rest", [("kmeans", {"conv_bits": 4, "coding": "huffman"}),
                                                                 ("fp16", {}), ("norms-as-affine", {})], True),
    ("k-means 3-bit on the three largest convs, 4-bit elsewhere + Huffman, BatchNorms as affine, fp16 rest",
     [("kmeans", {"conv_bits": 3, "coding": "huffman", "layers": LARGEST_CONVS}),
      ("kmeans", {"conv_bits": 4, "coding": "huffman"}), ("fp16", {}), ("norms-as-affine", {})], True),
    ("k-means 3-bit on the three largest convs, 4-bit elsewhere + Huffman, indices re-assigned in recovery, "
     "BatchNorms as affine, fp16 rest",
     [("kmeans", {"conv_bits": 3, "coding": "huffman", "layers": LARGEST_CONVS}),
      ("kmeans", {"conv_bits": 4, "coding": "huffman"}), ("fp16", {}), ("moving-indices", {}),
      ("norms-as-affine", {})], True),
    ("k-means 5-bit on the stem and depthwise convs, 3-bit on the three largest convs and the classifier, 4-bit "
     "elsewhere + Huffman, BatchNorms as affine, fp16 rest",
     [("kmeans", {"conv_bits": 5, "coding": "huffman", "layers": SENSITIVE_CONVS}),
      ("kmeans", {"conv_bits": 3, "coding": "huffman", "layers": LARGEST_CONVS + ["classifier.conv"]}),
      ("kmeans", {"conv_bits": 4, "coding": "huffman"}), ("fp16", {}), ("norms-as-affine", {})], True),
    ("k-means 3-bit on the three largest convs, 4-bit elsewhere + Huffman, recovered with hints, BatchNorms as "
     "affine, fp16 rest",
     [("kmeans", {"conv_bits": 3, "coding": "huffman", "layers": LARGEST_CONVS}),
      ("kmeans", {"conv_bits": 4, "coding": "huffman"}), ("fp16", {}),
      ("hints", {"points": HINT_POINTS, "weight": 1.0}), ("norms-as-affine", {})], True),
    ("Tucker on every conv", [("tucker", {"layers": "conv", "rank": 0.5})], True),
    ("L1 filter pruning -50 % FLOPs", [("prune-l1", {"flops": 0.5})], True),
)
FULL = {"copies": 16, "epochs": 12, "heldout_copies": 4, "lr": 0.001, "batch_size": 32, "temperature": 1.0,
        "freeze_norm": True, "seeds": [0], "confirm_seeds": [1, 2], "transfer": 2000, "select_transfer": 256,
        "select_faces": 256, "sparsities": [0.0, 0.5, 0.75],
        "bits": [None, 6, 5, 4, 3, 2]}
QUICK = {**FULL, "copies": 4, "epochs": 3, "transfer": 200, "sparsities": [0.0], "bits": [None, 4, 3, 2]}
RECOVERY_STEPS = ("norms-as-affine", "moving-indices", "hints")  # pipeline steps run_row applies around recovery
FULL_ONLY = tuple(label for label, pipeline, _ in ROWS  # the rows with such a step are extra experiments, not
                  if any(method in RECOVERY_STEPS for method, _ in pipeline))  # papers' findings: not in --quick
# (its 20-minute budget). ("moving-indices": the k-means indices are re-assigned while the copy recovers,
# ``share.moving_indices``; "hints": the copy also matches the original's stem and block outputs while it recovers,
# ``cnncompress.training.hints``.) Folding the BatchNorms into the convs before k-means (rows of the 2026-12-02 run,
# docs/results/table-emotion-2026-12-02/earlier-run) cost agreement (94 -> 85 %): the "fold-bn" step stays available to a
# pipeline ([("fold-bn", {}), ...], optimize's fold_norms) but is not a row.
SCORING_TRANSFER = 256  # natural crops (another seed than the distillation's) beside the val faces, for optimize
