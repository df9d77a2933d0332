"""The photo / video app: faces found (LBP cascade, tracked between full scans), classified on the fastest engine,
annotated videos and per-frame records (``predict``, ``stream``, ``video``, ``tracking``)."""
