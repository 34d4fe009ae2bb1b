"""The contract between the stages: what export writes, serving reads and clients send, defined once.

Neutral ground: numpy, protobuf and the generated protos only (never torch, grpc or a module of export,
serving or clients), so that every stage can import it without pulling in another.

    names.py         task names, tensor names, config.pbtxt parameter keys
    tensors.py       TensorSpec and the Triton enum <-> numpy <-> v2 datatype tables
    model_config.py  config.pbtxt: the one writer (render) and the one reader (parse)
    v2_codec.py      Open Inference Protocol tensors <-> numpy arrays, checked
    scenes.py        the procedural scenes every stage draws its images from
    sources.py       the digest of the sources an exported repository depends on
    caption_decoding.py  the one beam search (the server's), also measuring the export report's captions
    ranking.py       top-k columns of a score matrix, ties broken alike everywhere
    multicrop.py     Classify's test-time crops and their averaging (the server's, and the export's gate)
    tensorrt_runner.py   the one TensorRT engine runner (tensorrt imported lazily), export check and backend
    alignment_scores.py  the aligner's image-sentence scores and recall (Align and its export gate)
    explain_layers.py    the DeconvNet's `explain_layers` parameter
    preprocessing.py the `preprocessing` parameter as data and its one implementation (numpy + Pillow)
    warps.py         the STN's transforms in numpy (grids, projective and thin-plate-spline distortions)
"""
