"""WeightLens: explanations of token-level transcoder features from the weights alone.

For every feature of one (layer, shard), with chunked matrix products over many features at once
(see ``docs/weightlens.md`` for every definition and why):

1. **Input tokens** ``s_in = W_E · g``: ``g`` is the feature's encoder ``f_enc`` as a residual-stream
   direction (``projection``: the pre-MLP norm's gain folded in, LayerNorm centering applied; or the
   paper's literal ``f_enc``). z-scores over the vocabulary; candidates ``z > t_tok``.
2. **Output tokens** ``s_out = w · W_U`` with ``w`` the decoder row as the logits see it; promoted
   ``z > t_tok``, suppressed ``z < -t_tok`` (not validated).
3. **Upstream features** ``c = W_dec^{l'} · g`` for every earlier layer ``l'`` with a transcoder;
   kept when ``z > t_up`` (z within each upstream layer); relative contribution
   ``|c| / (sum |s_in| + sum_{l'} sum |c|)``; the kept features' validated tokens are inherited from
   their already computed results (a DataFrame per upstream layer: no recursion, no recomputation).
4. **Validation**: every candidate token (own and inherited) alone, as ``[BOS, token]`` with the
   model's own BOS (``[token]`` without one), in a few batched forward passes over the shard's
   unique candidate ids; a token is validated when the feature's activation at the last position is
   > 0. Token ids throughout, never re-tokenized strings.
5. **Classification** token-based vs context-dependent, an LLM-free **description**, an LLM-free
   **score** on held-out contexts (AUROC, precision, recall), and the optional **TWERA** ranking of
   upstream connections from co-activation statistics.

Entry point: :func:`circuit_insights.weightlens.run.run_weightlens`; the output's columns are
``schemas.WEIGHTLENS_SCHEMA``. Importers use the modules, one concern each:

- ``config``: :class:`~.config.Thresholds` and their presets, :class:`~.config.WeightLensOptions`
- ``zscores``: z-score statistics, the items above a threshold per row (:class:`~.zscores.Outliers`)
- ``directions``: transcoder weights as residual-stream directions under a ``projection``
- ``weights``: steps 1-3 for a shard's features, chunked (:func:`~.weights.analyze_weights`)
- ``upstream``: ranking the kept upstream features, inheriting their validated tokens (step 3b)
- ``validation``: single-token inputs and activations (step 4)
- ``classify``: token-based vs context-dependent; ``heldout``: the LLM-free held-out score
- ``describe``: the LLM-free description
- ``inputs``: checks of the features and transcoders given to a run
- ``run``: :func:`~.run.run_weightlens`, one (layer, shard); ``io``: results files, gathering
- ``twera``: the optional TWERA ranking of upstream connections
"""
