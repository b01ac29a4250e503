"""File formats that cross the border between this project and the tools researchers use.

- ``target``: :class:`TranscoderSet`, how other tools name a configured model's transcoders,
  and the layer / width checks every import shares.
- ``features``: named features, the per-layer feature lists of the config.
- ``graph``: circuit-tracer attribution-graph files: their feature nodes, the check of their
  metadata, the labelled copy, the local server's index.
- ``graph_example``: a small valid graph file for given features (examples, tests).
- ``table``: the tidy frame of imported explanations, the rows of an export.
- ``neuronpedia``, ``delphi``: the explanation formats, tabled in ``formats.FORMATS``.

Rank 1: imports only ``core``. Fields and the publishers' code they follow: docs/formats.md.
"""
